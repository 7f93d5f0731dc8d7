//! Amazon SNS building blocks that need no state: subscription filter policies and message
//! signatures.

pub mod filter;
pub mod signature;
