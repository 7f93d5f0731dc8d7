//! HTTP/S delivery policies as AWS defines them: parsing and validation of the subscription's
//! and the topic's `DeliveryPolicy` attributes (pure functions the API calls from
//! SetSubscriptionAttributes / SetTopicAttributes), the effective policy of a subscription, and
//! the delay before each retry.
//!
//! A subscription policy: `{"healthyRetryPolicy": {...}, "throttlePolicy": {...},
//! "requestPolicy": {"headerContentType": "..."}}`. A topic policy: `{"http":
//! {"defaultHealthyRetryPolicy": {...}, "defaultThrottlePolicy": {...}, "defaultRequestPolicy":
//! {...}, "disableSubscriptionOverrides": false}}`. Fields left out take AWS's defaults
//! (3 retries, 20 s apart, linear). A section the subscription sets replaces the topic's section
//! whole, unless the topic disables subscription overrides.
//!
//! Retries run in AWS's four phases: `numNoDelayRetries` at once, `numMinDelayRetries`
//! `minDelayTarget` apart, the backoff phase (the retries left over) growing from
//! `minDelayTarget` to `maxDelayTarget` along `backoffFunction`, then `numMaxDelayRetries`
//! `maxDelayTarget` apart. AWS publishes the backoff curves as a graph only; here, with `t` the
//! position in the phase (0 < t <= 1): linear `t`, arithmetic `t^2`, geometric
//! `min*(max/min)^t`, exponential `(2^(10t)-1)/1023`, each scaled from min to max, so the
//! last backoff retry waits `maxDelayTarget`. `throttlePolicy` is applied by the delivery
//! engine (throttle.rs).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest a policy's retries may take in total, AWS's hard limit.
pub const TOTAL_RETRY_SECS_MAX: u64 = 3600;
/// The most retries a policy may ask for.
pub const RETRIES_MAX: u32 = 100;
/// The longest delay between two retries.
pub const DELAY_SECS_MAX: u32 = 3600;

const CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "application/json",
    "application/xml",
    "text/xml",
    "text/html",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Linear,
    Arithmetic,
    Geometric,
    Exponential,
}

impl Backoff {
    fn parse(value: &str) -> Option<Backoff> {
        match value.to_ascii_lowercase().as_str() {
            "linear" => Some(Backoff::Linear),
            "arithmetic" => Some(Backoff::Arithmetic),
            "geometric" => Some(Backoff::Geometric),
            "exponential" => Some(Backoff::Exponential),
            _ => None,
        }
    }

    /// Where a delay sits between min (0) and max (1) at position `t` of the backoff phase.
    fn fraction(self, t: f64, min: f64, max: f64) -> f64 {
        match self {
            Backoff::Linear => t,
            Backoff::Arithmetic => t * t,
            Backoff::Geometric => {
                if max <= min {
                    1.0
                } else {
                    (min * (max / min).powf(t) - min) / (max - min)
                }
            }
            Backoff::Exponential => (2f64.powf(10.0 * t) - 1.0) / 1023.0,
        }
    }
}

/// `healthyRetryPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthyRetryPolicy {
    pub min_delay_target: u32,
    pub max_delay_target: u32,
    pub num_retries: u32,
    pub num_no_delay_retries: u32,
    pub num_min_delay_retries: u32,
    pub num_max_delay_retries: u32,
    pub backoff_function: Backoff,
}

impl Default for HealthyRetryPolicy {
    /// AWS's default for HTTP/S: 3 retries, 20 seconds apart.
    fn default() -> Self {
        HealthyRetryPolicy {
            min_delay_target: 20,
            max_delay_target: 20,
            num_retries: 3,
            num_no_delay_retries: 0,
            num_min_delay_retries: 0,
            num_max_delay_retries: 0,
            backoff_function: Backoff::Linear,
        }
    }
}

impl HealthyRetryPolicy {
    fn backoff_retries(&self) -> u32 {
        // Saturating: a policy that skipped validation gets no backoff phase, not a panic.
        self.num_retries
            .saturating_sub(self.num_no_delay_retries)
            .saturating_sub(self.num_min_delay_retries)
            .saturating_sub(self.num_max_delay_retries)
    }

    /// How long to wait before retry number `retry` (1 = the first retry, after the first
    /// attempt failed); `None` when the policy has no such retry.
    pub fn delay_before(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.num_retries {
            return None;
        }
        let (min, max) = (self.min_delay_target as f64, self.max_delay_target as f64);
        let no_delay = self.num_no_delay_retries;
        let min_delay = no_delay + self.num_min_delay_retries;
        let backoff = self.backoff_retries();
        let secs = if retry <= no_delay {
            0.0
        } else if retry <= min_delay {
            min
        } else if retry <= min_delay + backoff {
            let t = (retry - min_delay) as f64 / backoff as f64;
            min + (max - min) * self.backoff_function.fraction(t, min, max)
        } else {
            max
        };
        Some(Duration::from_millis((secs * 1000.0).round() as u64))
    }

    /// The sum of all the delays.
    pub fn total_delay(&self) -> Duration {
        (1..=self.num_retries)
            .filter_map(|r| self.delay_before(r))
            .sum()
    }

    fn validate(&self, at: &str) -> Result<(), String> {
        if self.num_retries > RETRIES_MAX {
            return Err(format!(
                "{at}.numRetries must be between 0 and {RETRIES_MAX}"
            ));
        }
        if self.max_delay_target == 0 || self.max_delay_target > DELAY_SECS_MAX {
            return Err(format!(
                "{at}.maxDelayTarget must be between 1 and {DELAY_SECS_MAX}"
            ));
        }
        if self.min_delay_target == 0 || self.min_delay_target > self.max_delay_target {
            return Err(format!(
                "{at}.minDelayTarget must be between 1 and maxDelayTarget ({})",
                self.max_delay_target
            ));
        }
        let phases = self.num_no_delay_retries as u64
            + self.num_min_delay_retries as u64
            + self.num_max_delay_retries as u64;
        if phases > self.num_retries as u64 {
            return Err(format!(
                "{at}: numNoDelayRetries + numMinDelayRetries + numMaxDelayRetries ({phases}) \
                 must not exceed numRetries ({})",
                self.num_retries
            ));
        }
        let total = self.total_delay().as_secs();
        if total > TOTAL_RETRY_SECS_MAX {
            return Err(format!(
                "{at}: the retries take {total} seconds in total, more than the \
                 {TOTAL_RETRY_SECS_MAX} allowed"
            ));
        }
        Ok(())
    }
}

/// `throttlePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottlePolicy {
    pub max_receives_per_second: u32,
}

/// `requestPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPolicy {
    pub header_content_type: String,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            header_content_type: "text/plain; charset=UTF-8".into(),
        }
    }
}

/// The policy a delivery follows: every section resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicy {
    pub healthy_retry_policy: HealthyRetryPolicy,
    pub throttle_policy: Option<ThrottlePolicy>,
    pub request_policy: RequestPolicy,
}

/// A subscription's `DeliveryPolicy` attribute: the sections it sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriptionDeliveryPolicy {
    pub healthy_retry_policy: Option<HealthyRetryPolicy>,
    pub throttle_policy: Option<ThrottlePolicy>,
    pub request_policy: Option<RequestPolicy>,
}

/// A topic's `DeliveryPolicy` attribute, its `http` part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicDeliveryPolicy {
    pub default_healthy_retry_policy: Option<HealthyRetryPolicy>,
    pub default_throttle_policy: Option<ThrottlePolicy>,
    pub default_request_policy: Option<RequestPolicy>,
    pub disable_subscription_overrides: bool,
}

/// A refused policy; `Display` is the InvalidParameter message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicyError(pub String);

impl std::fmt::Display for DeliveryPolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Invalid parameter: DeliveryPolicy: {}", self.0)
    }
}

impl std::error::Error for DeliveryPolicyError {}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{at} must be a JSON object"))
}

fn only_keys(map: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{at}: unknown key {k:?}")),
        None => Ok(()),
    }
}

fn count(map: &Map<String, Value>, at: &str, key: &str, default: u32) -> Result<u32, String> {
    match map.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{at}.{key} must be a non-negative integer")),
    }
}

fn parse_retry(value: &Value, at: &str) -> Result<HealthyRetryPolicy, String> {
    let map = object(value, at)?;
    only_keys(
        map,
        at,
        &[
            "minDelayTarget",
            "maxDelayTarget",
            "numRetries",
            "numNoDelayRetries",
            "numMinDelayRetries",
            "numMaxDelayRetries",
            "backoffFunction",
        ],
    )?;
    let d = HealthyRetryPolicy::default();
    let backoff_function = match map.get("backoffFunction") {
        None => d.backoff_function,
        Some(v) => v.as_str().and_then(Backoff::parse).ok_or_else(|| {
            format!("{at}.backoffFunction must be linear, arithmetic, geometric or exponential")
        })?,
    };
    let policy = HealthyRetryPolicy {
        min_delay_target: count(map, at, "minDelayTarget", d.min_delay_target)?,
        max_delay_target: count(map, at, "maxDelayTarget", d.max_delay_target)?,
        num_retries: count(map, at, "numRetries", d.num_retries)?,
        num_no_delay_retries: count(map, at, "numNoDelayRetries", 0)?,
        num_min_delay_retries: count(map, at, "numMinDelayRetries", 0)?,
        num_max_delay_retries: count(map, at, "numMaxDelayRetries", 0)?,
        backoff_function,
    };
    policy.validate(at)?;
    Ok(policy)
}

fn parse_throttle(value: &Value, at: &str) -> Result<ThrottlePolicy, String> {
    let map = object(value, at)?;
    only_keys(map, at, &["maxReceivesPerSecond"])?;
    let n = count(map, at, "maxReceivesPerSecond", 1)?;
    if n == 0 {
        return Err(format!("{at}.maxReceivesPerSecond must be at least 1"));
    }
    Ok(ThrottlePolicy {
        max_receives_per_second: n,
    })
}

fn parse_request(value: &Value, at: &str) -> Result<RequestPolicy, String> {
    let map = object(value, at)?;
    only_keys(map, at, &["headerContentType"])?;
    let Some(content_type) = map.get("headerContentType") else {
        return Ok(RequestPolicy::default());
    };
    let text = content_type.as_str().unwrap_or_default();
    let (media, params) = text.split_once(';').unwrap_or((text, ""));
    let charset_ok =
        params.trim().is_empty() || params.trim().eq_ignore_ascii_case("charset=UTF-8");
    if !CONTENT_TYPES.contains(&media.trim().to_ascii_lowercase().as_str()) || !charset_ok {
        return Err(format!(
            "{at}.headerContentType must be one of {} (optionally with \"; charset=UTF-8\")",
            CONTENT_TYPES.join(", ")
        ));
    }
    Ok(RequestPolicy {
        header_content_type: text.to_string(),
    })
}

fn parse_json(json: &str) -> Result<Value, DeliveryPolicyError> {
    serde_json::from_str(json)
        .map_err(|e| DeliveryPolicyError(format!("failed to parse JSON: {e}")))
}

impl SubscriptionDeliveryPolicy {
    /// Parses and validates a subscription's `DeliveryPolicy` attribute.
    pub fn parse(json: &str) -> Result<SubscriptionDeliveryPolicy, DeliveryPolicyError> {
        let value = parse_json(json)?;
        let inner = || -> Result<SubscriptionDeliveryPolicy, String> {
            let map = object(&value, "DeliveryPolicy")?;
            only_keys(
                map,
                "DeliveryPolicy",
                &["healthyRetryPolicy", "throttlePolicy", "requestPolicy"],
            )?;
            Ok(SubscriptionDeliveryPolicy {
                healthy_retry_policy: map
                    .get("healthyRetryPolicy")
                    .map(|v| parse_retry(v, "healthyRetryPolicy"))
                    .transpose()?,
                throttle_policy: map
                    .get("throttlePolicy")
                    .map(|v| parse_throttle(v, "throttlePolicy"))
                    .transpose()?,
                request_policy: map
                    .get("requestPolicy")
                    .map(|v| parse_request(v, "requestPolicy"))
                    .transpose()?,
            })
        };
        inner().map_err(DeliveryPolicyError)
    }
}

impl TopicDeliveryPolicy {
    /// Parses and validates a topic's `DeliveryPolicy` attribute (its `http` part; other
    /// protocols' parts are refused, since only HTTP/S policies can be changed).
    pub fn parse(json: &str) -> Result<TopicDeliveryPolicy, DeliveryPolicyError> {
        let value = parse_json(json)?;
        let inner = || -> Result<TopicDeliveryPolicy, String> {
            let map = object(&value, "DeliveryPolicy")?;
            only_keys(map, "DeliveryPolicy", &["http"])?;
            let Some(http) = map.get("http") else {
                return Ok(TopicDeliveryPolicy::default());
            };
            let http = object(http, "http")?;
            only_keys(
                http,
                "http",
                &[
                    "defaultHealthyRetryPolicy",
                    "defaultThrottlePolicy",
                    "defaultRequestPolicy",
                    "disableSubscriptionOverrides",
                ],
            )?;
            let disable = match http.get("disableSubscriptionOverrides") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    "http.disableSubscriptionOverrides must be true or false".to_string()
                })?,
            };
            Ok(TopicDeliveryPolicy {
                default_healthy_retry_policy: http
                    .get("defaultHealthyRetryPolicy")
                    .map(|v| parse_retry(v, "http.defaultHealthyRetryPolicy"))
                    .transpose()?,
                default_throttle_policy: http
                    .get("defaultThrottlePolicy")
                    .map(|v| parse_throttle(v, "http.defaultThrottlePolicy"))
                    .transpose()?,
                default_request_policy: http
                    .get("defaultRequestPolicy")
                    .map(|v| parse_request(v, "http.defaultRequestPolicy"))
                    .transpose()?,
                disable_subscription_overrides: disable,
            })
        };
        inner().map_err(DeliveryPolicyError)
    }
}

impl DeliveryPolicy {
    /// The policy a subscription's deliveries follow: AWS's defaults, then the topic's, then
    /// the subscription's sections unless the topic disables overrides.
    pub fn effective(
        topic: Option<&TopicDeliveryPolicy>,
        subscription: Option<&SubscriptionDeliveryPolicy>,
    ) -> DeliveryPolicy {
        let mut policy = DeliveryPolicy::default();
        if let Some(topic) = topic {
            if let Some(r) = topic.default_healthy_retry_policy {
                policy.healthy_retry_policy = r;
            }
            if topic.default_throttle_policy.is_some() {
                policy.throttle_policy = topic.default_throttle_policy;
            }
            if let Some(r) = &topic.default_request_policy {
                policy.request_policy = r.clone();
            }
        }
        let overrides = !topic.is_some_and(|t| t.disable_subscription_overrides);
        if let (true, Some(sub)) = (overrides, subscription) {
            if let Some(r) = sub.healthy_retry_policy {
                policy.healthy_retry_policy = r;
            }
            if sub.throttle_policy.is_some() {
                policy.throttle_policy = sub.throttle_policy;
            }
            if let Some(r) = &sub.request_policy {
                policy.request_policy = r.clone();
            }
        }
        policy
    }

    /// The effective policy as JSON, as GetSubscriptionAttributes shows `EffectiveDeliveryPolicy`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a delivery policy serializes")
    }
}
