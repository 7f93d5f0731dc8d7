//! Decoding botocore-shaped Query posts, routing by service, and the handle path with a
//! recording backend.

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::sqs::MessageAttributeValue;

fn ctx() -> RequestContext {
    RequestContext {
        account_id: "000000000000".into(),
        region: "us-east-1".into(),
        base_url: "http://localhost:4566".into(),
        access_key_id: None,
        request_id: "rid".into(),
    }
}

fn form_parts() -> Parts {
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("test future waited"),
    }
}

const TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:orders";

#[test]
fn publish_decodes_botocore_form() {
    let body = format!(
        "Action=Publish&Version=2010-03-31&TopicArn={}&Message=hi%20there&Subject=s\
         &MessageAttributes.entry.1.Name=colour&MessageAttributes.entry.1.Value.DataType=String\
         &MessageAttributes.entry.1.Value.StringValue=red",
        TOPIC.replace(':', "%3A")
    );
    let (op, r) = decode(&form_parts(), body.as_bytes()).unwrap();
    assert_eq!(op, "Publish");
    let SnsRequest::Publish { topic_arn, input } = r else {
        panic!("{r:?}")
    };
    assert_eq!(topic_arn, TOPIC);
    assert_eq!(input.message, "hi there");
    assert_eq!(input.subject.as_deref(), Some("s"));
    assert_eq!(
        input.message_attributes["colour"],
        MessageAttributeValue::string("String", "red")
    );
}

#[test]
fn bad_requests_get_sns_errors() {
    let cases: &[(&str, &str)] = &[
        ("Version=2010-03-31", "MissingParameter"),
        ("Action=Frobnicate", "InvalidAction"),
        ("Action=CreateTopic&Name=bad%20name", "InvalidParameter"),
        ("Action=CreateTopic", "InvalidParameter"),
        ("Action=Publish&Message=x", "InvalidParameter"),
        ("Action=Publish&TopicArn=t&Message=", "InvalidParameter"),
        (
            "Action=Publish&TopicArn=t&Message=x&MessageStructure=json",
            "InvalidParameter",
        ),
        ("Action=PublishBatch&TopicArn=t", "EmptyBatchRequest"),
        ("Action=Subscribe&TopicArn=t", "InvalidParameter"),
        (
            "Action=Subscribe&TopicArn=t&Protocol=sqs&ReturnSubscriptionArn=x",
            "InvalidParameter",
        ),
    ];
    for (body, code) in cases {
        let e = decode(&form_parts(), body.as_bytes()).unwrap_err();
        assert_eq!(e.code, *code, "{body}: {e:?}");
        assert!(e.status.is_client_error(), "{body}");
    }
}

#[test]
fn routing_by_signing_service_or_sns_only_action() {
    let p = form_parts();
    assert!(is_sns(Some("sns"), &p, b"Action=AddPermission"));
    assert!(!is_sns(Some("sqs"), &p, b"Action=Publish"));
    assert!(is_sns(None, &p, b"Action=Publish&TopicArn=x"));
    assert!(is_sns(None, &p, b"Action=CreateTopic&Name=x"));
    // Both APIs have AddPermission: unsigned, the TopicArn decides.
    assert!(!is_sns(None, &p, b"Action=AddPermission&QueueUrl=x"));
    assert!(is_sns(None, &p, b"Action=AddPermission&TopicArn=x"));
}

struct Recorder(Mutex<Vec<SnsRequest>>);

impl SnsBackend for Recorder {
    fn call(
        &self,
        _ctx: &RequestContext,
        request: SnsRequest,
    ) -> impl Future<Output = Result<SnsResponse, AwsError>> + Send {
        self.0.lock().unwrap().push(request.clone());
        std::future::ready(match request {
            SnsRequest::CreateTopic { .. } => Ok(SnsResponse::TopicArn(TOPIC.into())),
            _ => Err(AwsError::sns_not_found("Topic does not exist")),
        })
    }
}

#[test]
fn handle_answers_xml_and_errors_in_the_sns_namespace() {
    let b = Recorder(Mutex::new(Vec::new()));
    let r = ready(handle(
        &b,
        &ctx(),
        &form_parts(),
        b"Action=CreateTopic&Name=orders&Tags.member.1.Key=k&Tags.member.1.Value=v",
    ));
    assert_eq!(r.status(), 200);
    let x = std::str::from_utf8(r.body()).unwrap();
    assert!(
        x.contains(&format!(
            "<CreateTopicResult><TopicArn>{TOPIC}</TopicArn></CreateTopicResult>"
        )),
        "{x}"
    );
    assert!(x.contains(SNS_XMLNS));
    let r = ready(handle(
        &b,
        &ctx(),
        &form_parts(),
        format!("Action=DeleteTopic&TopicArn={TOPIC}").as_bytes(),
    ));
    assert_eq!(r.status(), 404);
    let x = std::str::from_utf8(r.body()).unwrap();
    assert!(x.contains("<Code>NotFound</Code>"), "{x}");
    assert!(x.contains(SNS_XMLNS), "{x}");
    let calls = b.0.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let SnsRequest::CreateTopic { tags, .. } = &calls[0] else {
        panic!()
    };
    assert_eq!(tags["k"], "v");
}
