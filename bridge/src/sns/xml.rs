//! SNS Query responses: `<OpResponse xmlns=...><OpResult>...</OpResult><ResponseMetadata>`,
//! with SNS's own shapes: lists are `<member>` elements, string maps are `<entry>` elements of
//! `<key>`/`<value>` (SNS's model, unlike SQS's `Attribute`/`Name`/`Value`).

use quick_xml::escape::escape;

use super::types::{PublishResult, SnsResponse};
use crate::error::SNS_XMLNS;

/// The XML body of a successful response to `op`.
pub fn response(op: &str, resp: &SnsResponse, request_id: &str) -> String {
    let mut out = format!("<?xml version=\"1.0\"?><{op}Response xmlns=\"{SNS_XMLNS}\">");
    let mut result = String::new();
    match resp {
        SnsResponse::Empty => {}
        SnsResponse::TopicArn(arn) => text(&mut result, "TopicArn", arn),
        SnsResponse::SubscriptionArn(arn) => text(&mut result, "SubscriptionArn", arn),
        SnsResponse::Topics {
            topic_arns,
            next_token,
        } => {
            result.push_str("<Topics>");
            for arn in topic_arns {
                result.push_str("<member>");
                text(&mut result, "TopicArn", arn);
                result.push_str("</member>");
            }
            result.push_str("</Topics>");
            if let Some(t) = next_token {
                text(&mut result, "NextToken", t);
            }
        }
        SnsResponse::Attributes(map) => {
            result.push_str("<Attributes>");
            for (k, v) in map {
                result.push_str("<entry>");
                text(&mut result, "key", k);
                text(&mut result, "value", v);
                result.push_str("</entry>");
            }
            result.push_str("</Attributes>");
        }
        SnsResponse::Subscriptions {
            subscriptions,
            next_token,
        } => {
            result.push_str("<Subscriptions>");
            for s in subscriptions {
                result.push_str("<member>");
                text(&mut result, "TopicArn", &s.topic_arn);
                text(&mut result, "Protocol", &s.protocol);
                text(&mut result, "SubscriptionArn", &s.subscription_arn);
                text(&mut result, "Owner", &s.owner);
                text(&mut result, "Endpoint", &s.endpoint);
                result.push_str("</member>");
            }
            result.push_str("</Subscriptions>");
            if let Some(t) = next_token {
                text(&mut result, "NextToken", t);
            }
        }
        SnsResponse::Published(p) => published(&mut result, p),
        SnsResponse::PublishedBatch { successful, failed } => {
            result.push_str("<Successful>");
            for (id, p) in successful {
                result.push_str("<member>");
                text(&mut result, "Id", id);
                published(&mut result, p);
                result.push_str("</member>");
            }
            result.push_str("</Successful><Failed>");
            for f in failed {
                result.push_str("<member>");
                text(&mut result, "Id", &f.id);
                text(&mut result, "Code", &f.code);
                text(&mut result, "Message", &f.message);
                text(
                    &mut result,
                    "SenderFault",
                    if f.sender_fault { "true" } else { "false" },
                );
                result.push_str("</member>");
            }
            result.push_str("</Failed>");
        }
        SnsResponse::Tags(tags) => {
            result.push_str("<Tags>");
            for (k, v) in tags {
                result.push_str("<member>");
                text(&mut result, "Key", k);
                text(&mut result, "Value", v);
                result.push_str("</member>");
            }
            result.push_str("</Tags>");
        }
    }
    // Operations without an output shape answer with ResponseMetadata only; those whose
    // output shape is empty (tagging) still have their result element, which SDKs look for.
    if !matches!(resp, SnsResponse::Empty) || matches!(op, "TagResource" | "UntagResource") {
        out.push_str(&format!("<{op}Result>{result}</{op}Result>"));
    }
    out.push_str(&format!(
        "<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{op}Response>",
        escape(request_id)
    ));
    out
}

fn published(out: &mut String, p: &PublishResult) {
    text(out, "MessageId", &p.message_id);
    if let Some(s) = &p.sequence_number {
        text(out, "SequenceNumber", s);
    }
}

fn text(out: &mut String, name: &str, s: &str) {
    out.push_str(&format!("<{name}>{}</{name}>", escape(s)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sns::types::SubscriptionSummary;

    #[test]
    fn shapes_follow_the_sns_model() {
        let x = response("DeleteTopic", &SnsResponse::Empty, "r1");
        assert_eq!(
            x,
            format!(
                "<?xml version=\"1.0\"?><DeleteTopicResponse xmlns=\"{SNS_XMLNS}\">\
                 <ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata>\
                 </DeleteTopicResponse>"
            )
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("DisplayName".to_string(), "a<b".to_string());
        let x = response("GetTopicAttributes", &SnsResponse::Attributes(m), "r");
        assert!(
            x.contains("<Attributes><entry><key>DisplayName</key><value>a&lt;b</value></entry></Attributes>"),
            "{x}"
        );
        let x = response(
            "ListSubscriptions",
            &SnsResponse::Subscriptions {
                subscriptions: vec![SubscriptionSummary {
                    subscription_arn: "s".into(),
                    owner: "o".into(),
                    protocol: "sqs".into(),
                    endpoint: "e".into(),
                    topic_arn: "t".into(),
                }],
                next_token: Some("n".into()),
            },
            "r",
        );
        assert!(x.contains("<Subscriptions><member><TopicArn>t</TopicArn><Protocol>sqs</Protocol><SubscriptionArn>s</SubscriptionArn><Owner>o</Owner><Endpoint>e</Endpoint></member></Subscriptions><NextToken>n</NextToken>"), "{x}");
    }
}
