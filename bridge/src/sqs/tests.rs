//! Decoding both protocols into the same request, validation, and the full handle path with a
//! recording backend.

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::*;

fn ctx() -> RequestContext {
    RequestContext {
        account_id: "000000000000".into(),
        region: "us-east-1".into(),
        base_url: "http://localhost:4566".into(),
        access_key_id: None,
        request_id: "rid".into(),
    }
}

fn json_parts(op: &str) -> Parts {
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", format!("AmazonSQS.{op}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn form_parts(path: &str) -> Parts {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// Runs a future that never waits (the test backend answers at once).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("test future waited"),
    }
}

#[test]
fn both_protocols_decode_to_the_same_request() {
    let json = br#"{"QueueUrl":"http://localhost:4566/000000000000/q","MessageBody":"hi",
        "DelaySeconds":5,"MessageAttributes":{"n":{"DataType":"Number","StringValue":"7"}}}"#;
    let a = decode(Protocol::Json, &json_parts("SendMessage"), json, &ctx()).unwrap();
    let form = b"Action=SendMessage&Version=2012-11-05&MessageBody=hi&DelaySeconds=5\
        &MessageAttribute.1.Name=n&MessageAttribute.1.Value.DataType=Number\
        &MessageAttribute.1.Value.StringValue=7";
    // The queue URL comes from the path here, as older SDKs send it.
    let b = decode(
        Protocol::Query,
        &form_parts("/000000000000/q"),
        form,
        &ctx(),
    )
    .unwrap();
    assert_eq!(a, b);
    match a {
        SqsRequest::SendMessage(s) => {
            assert_eq!(s.delay_seconds, Some(5));
            assert_eq!(s.message_attributes["n"].string_value.as_deref(), Some("7"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_queue_tags_from_both_protocols() {
    let json = br#"{"QueueName":"q","tags":{"team":"core"},"Attributes":{"DelaySeconds":"1"}}"#;
    let a = decode(Protocol::Json, &json_parts("CreateQueue"), json, &ctx()).unwrap();
    let form = b"Action=CreateQueue&QueueName=q&Tag.1.Key=team&Tag.1.Value=core\
        &Attribute.1.Name=DelaySeconds&Attribute.1.Value=1";
    let b = decode(Protocol::Query, &form_parts("/"), form, &ctx()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn unknown_operations_are_answered_as_aws_does() {
    let e = decode(Protocol::Json, &json_parts("CreateTopic"), b"{}", &ctx()).unwrap_err();
    assert_eq!(
        e.json_type,
        "com.amazon.coral.service#UnknownOperationException"
    );
    let e = decode(
        Protocol::Query,
        &form_parts("/"),
        b"Action=Frobnicate",
        &ctx(),
    )
    .unwrap_err();
    assert_eq!(e.code, "InvalidAction");
    assert_eq!(
        e.message,
        "The action Frobnicate is not valid for this endpoint."
    );
    let e = decode(Protocol::Query, &form_parts("/"), b"QueueName=x", &ctx()).unwrap_err();
    assert_eq!(e.code, "MissingParameter");
}

#[test]
fn missing_and_invalid_parameters() {
    let e = decode(Protocol::Json, &json_parts("GetQueueUrl"), b"{}", &ctx()).unwrap_err();
    assert_eq!(e.code, "MissingParameter");
    assert_eq!(
        e.message,
        "The request must contain the parameter QueueName."
    );
    let e = decode(Protocol::Json, &json_parts("GetQueueUrl"), b"{nope", &ctx()).unwrap_err();
    assert_eq!(e.code, "SerializationException");
    let e = decode(Protocol::Json, &json_parts("GetQueueUrl"), b"[1]", &ctx()).unwrap_err();
    assert_eq!(e.code, "SerializationException");
    let body = br#"{"QueueUrl":"u","MaxNumberOfMessages":11}"#;
    let e = decode(Protocol::Json, &json_parts("ReceiveMessage"), body, &ctx()).unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
    let body = br#"{"QueueUrl":"u","WaitTimeSeconds":21}"#;
    assert!(decode(Protocol::Json, &json_parts("ReceiveMessage"), body, &ctx()).is_err());
    let body = br#"{"QueueName":"bad name"}"#;
    let e = decode(Protocol::Json, &json_parts("CreateQueue"), body, &ctx()).unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
}

#[test]
fn batch_shape_errors() {
    let entry = |id: &str| format!(r#"{{"Id":"{id}","ReceiptHandle":"h"}}"#);
    let body =
        |entries: Vec<String>| format!(r#"{{"QueueUrl":"u","Entries":[{}]}}"#, entries.join(","));
    let run = |b: String| {
        decode(
            Protocol::Json,
            &json_parts("DeleteMessageBatch"),
            b.as_bytes(),
            &ctx(),
        )
    };
    assert_eq!(
        run(body(vec![])).unwrap_err().code,
        "AWS.SimpleQueueService.EmptyBatchRequest"
    );
    let eleven = (0..11).map(|i| entry(&format!("e{i}"))).collect();
    assert_eq!(
        run(body(eleven)).unwrap_err().code,
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    );
    assert_eq!(
        run(body(vec![entry("a"), entry("a")])).unwrap_err().code,
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    );
    assert_eq!(
        run(body(vec![entry("a b")])).unwrap_err().code,
        "AWS.SimpleQueueService.InvalidBatchEntryId"
    );
    assert!(run(body(vec![entry("a"), entry("b")])).is_ok());
}

#[test]
fn send_validation() {
    let mut i = SendMessageInput {
        queue_url: "u".into(),
        message_body: "ok".into(),
        delay_seconds: None,
        message_attributes: Default::default(),
        message_system_attributes: Default::default(),
        message_deduplication_id: None,
        message_group_id: None,
    };
    validate_send(&i).unwrap();
    i.message_body = "bad\u{1}".into();
    assert_eq!(
        validate_send(&i).unwrap_err().code,
        "InvalidMessageContents"
    );
    i.message_body = "ok".into();
    i.delay_seconds = Some(901);
    assert_eq!(validate_send(&i).unwrap_err().code, "InvalidParameterValue");
    i.delay_seconds = None;
    i.message_attributes
        .insert("n".into(), MessageAttributeValue::string("Number", "x"));
    assert_eq!(validate_send(&i).unwrap_err().code, "InvalidParameterValue");
    i.message_attributes
        .insert("n".into(), MessageAttributeValue::string("Text", "x"));
    assert!(validate_send(&i).is_err());
    i.message_attributes.insert(
        "n".into(),
        MessageAttributeValue::binary("Binary", b"\x00\x01"),
    );
    validate_send(&i).unwrap();
    i.message_attributes
        .insert("AWS.x".into(), MessageAttributeValue::string("String", "x"));
    assert!(validate_send(&i).is_err());
}

/// Records requests and answers with canned responses.
struct Canned(Mutex<Vec<SqsRequest>>);

impl SqsBackend for Canned {
    fn call(
        &self,
        _ctx: &RequestContext,
        request: SqsRequest,
    ) -> impl Future<Output = Result<SqsResponse, AwsError>> + Send {
        self.0.lock().unwrap().push(request.clone());
        let result = match request {
            SqsRequest::SendMessage(i) => Ok(SqsResponse::SendMessage(
                SendMessageOutput::for_input(&i, "id-1".into(), None),
            )),
            SqsRequest::ReceiveMessage(_) => {
                let mut message_attributes = MessageAttributes::new();
                message_attributes
                    .insert("a.x".into(), MessageAttributeValue::string("String", "v"));
                message_attributes.insert("b".into(), MessageAttributeValue::string("Number", "1"));
                let mut attributes = Attributes::new();
                attributes.insert("SenderId".into(), "s".into());
                attributes.insert("ApproximateReceiveCount".into(), "1".into());
                Ok(SqsResponse::ReceiveMessage(ReceiveMessageOutput {
                    messages: vec![Message {
                        message_id: "m".into(),
                        receipt_handle: "h".into(),
                        md5_of_body: String::new(),
                        body: "hello".into(),
                        attributes,
                        md5_of_message_attributes: None,
                        message_attributes,
                    }],
                }))
            }
            _ => Err(AwsError::queue_does_not_exist(
                "The specified queue does not exist.",
            )),
        };
        std::future::ready(result)
    }
}

#[test]
fn handle_json_send_and_error() {
    let b = Canned(Mutex::new(Vec::new()));
    let body = br#"{"QueueUrl":"u","MessageBody":"hello"}"#;
    let r = ready(handle(&b, &ctx(), &json_parts("SendMessage"), body));
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["MD5OfMessageBody"], "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(v["MessageId"], "id-1");
    assert!(v.get("MD5OfMessageAttributes").is_none());

    let r = ready(handle(
        &b,
        &ctx(),
        &json_parts("DeleteQueue"),
        br#"{"QueueUrl":"u"}"#,
    ));
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["x-amzn-query-error"],
        "AWS.SimpleQueueService.NonExistentQueue;Sender"
    );
    // Invalid requests never reach the backend.
    let r = ready(handle(
        &b,
        &ctx(),
        &json_parts("SendMessage"),
        br#"{"QueueUrl":"u"}"#,
    ));
    assert_eq!(r.status(), 400);
    assert_eq!(b.0.lock().unwrap().len(), 2);
}

#[test]
fn handle_receive_selects_attributes_and_digests() {
    let b = Canned(Mutex::new(Vec::new()));
    let body = br#"{"QueueUrl":"u","MessageAttributeNames":["a.*"],"MessageSystemAttributeNames":["SenderId"]}"#;
    let r = ready(handle(&b, &ctx(), &json_parts("ReceiveMessage"), body));
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    let m = &v["Messages"][0];
    assert_eq!(m["MD5OfBody"], "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(m["Attributes"], serde_json::json!({"SenderId": "s"}));
    assert_eq!(m["MessageAttributes"].as_object().unwrap().len(), 1);
    let only = crate::md5::md5_of_attributes([(
        "a.x",
        "String",
        &crate::md5::AttrValue::String("v".into()),
    )]);
    assert_eq!(m["MD5OfMessageAttributes"].as_str(), only.as_deref());
    // Without names: no attributes and no attribute digest.
    let r = ready(handle(
        &b,
        &ctx(),
        &json_parts("ReceiveMessage"),
        br#"{"QueueUrl":"u"}"#,
    ));
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert!(v["Messages"][0].get("MessageAttributes").is_none());
    assert!(v["Messages"][0].get("MD5OfMessageAttributes").is_none());
}

#[test]
fn handle_query_answers_xml() {
    let b = Canned(Mutex::new(Vec::new()));
    let r = ready(handle(
        &b,
        &ctx(),
        &form_parts("/"),
        b"Action=SendMessage&QueueUrl=u&MessageBody=hello",
    ));
    assert_eq!(r.status(), 200);
    let s = std::str::from_utf8(r.body()).unwrap();
    assert!(
        s.contains("<SendMessageResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">"),
        "{s}"
    );
    assert!(s.contains("<MD5OfMessageBody>5d41402abc4b2a76b9719d911017c592</MD5OfMessageBody>"));
    let r = ready(handle(
        &b,
        &ctx(),
        &form_parts("/"),
        b"Action=DeleteQueue&QueueUrl=u",
    ));
    assert_eq!(r.status(), 400);
    let s = std::str::from_utf8(r.body()).unwrap();
    assert!(
        s.contains("<Code>AWS.SimpleQueueService.NonExistentQueue</Code>"),
        "{s}"
    );
}

#[test]
fn add_permission_from_both_protocols() {
    let json = br#"{"QueueUrl":"u","Label":"l1","AWSAccountIds":["111111111111"],"Actions":["SendMessage"]}"#;
    let a = decode(Protocol::Json, &json_parts("AddPermission"), json, &ctx()).unwrap();
    let form = b"Action=AddPermission&QueueUrl=u&Label=l1&AWSAccountId.1=111111111111&ActionName.1=SendMessage";
    let b = decode(Protocol::Query, &form_parts("/"), form, &ctx()).unwrap();
    assert_eq!(a, b);
    let bad = br#"{"QueueUrl":"u","Label":"bad label","AWSAccountIds":["1"],"Actions":["*"]}"#;
    let e = decode(Protocol::Json, &json_parts("AddPermission"), bad, &ctx()).unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
}

#[test]
fn move_task_ranges() {
    let body = br#"{"SourceArn":"a","MaxNumberOfMessagesPerSecond":501}"#;
    let e = decode(
        Protocol::Json,
        &json_parts("StartMessageMoveTask"),
        body,
        &ctx(),
    )
    .unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
    let body = br#"{"SourceArn":"a","MaxResults":11}"#;
    assert!(decode(
        Protocol::Json,
        &json_parts("ListMessageMoveTasks"),
        body,
        &ctx()
    )
    .is_err());
}
