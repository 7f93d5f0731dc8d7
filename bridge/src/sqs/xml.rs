//! Query protocol responses: the JSON-shaped output written as SQS's XML
//! (`<OpResponse xmlns=...><OpResult>...</OpResult><ResponseMetadata>...`).
//!
//! Lists are repeated elements with the singular name (`QueueUrl`, `Message`,
//! `<Op>ResultEntry`, `BatchResultErrorEntry`); maps are repeated `Attribute` (`Name`/`Value`),
//! `Tag` (`Key`/`Value`) or `MessageAttribute` (`Name`/`Value`) elements.

use quick_xml::escape::escape;
use serde_json::Value;

use crate::error::SQS_XMLNS;

/// The XML body of a successful Query response.
pub fn response(op: &str, output: &Value, request_id: &str) -> String {
    let mut out = format!("<?xml version=\"1.0\"?><{op}Response xmlns=\"{SQS_XMLNS}\">");
    if let Value::Object(fields) = output {
        if !fields.is_empty() {
            out.push_str(&format!("<{op}Result>"));
            for (name, value) in fields {
                member(&mut out, op, name, value);
            }
            out.push_str(&format!("</{op}Result>"));
        }
    }
    out.push_str(&format!(
        "<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{op}Response>",
        escape(request_id)
    ));
    out
}

fn member(out: &mut String, op: &str, name: &str, value: &Value) {
    match (name, value) {
        ("QueueUrls" | "queueUrls", Value::Array(items)) => {
            items.iter().for_each(|v| element(out, "QueueUrl", v));
        }
        ("Messages", Value::Array(items)) => {
            items
                .iter()
                .for_each(|v| element_with(out, op, "Message", v));
        }
        ("Successful", Value::Array(items)) => {
            let entry = format!("{op}ResultEntry");
            items.iter().for_each(|v| element_with(out, op, &entry, v));
        }
        ("Results", Value::Array(items)) => {
            items
                .iter()
                .for_each(|v| element_with(out, op, &format!("{op}ResultEntry"), v));
        }
        ("Failed", Value::Array(items)) => {
            items
                .iter()
                .for_each(|v| element_with(out, op, "BatchResultErrorEntry", v));
        }
        ("Attributes", Value::Object(m)) => {
            for (k, v) in m {
                out.push_str("<Attribute>");
                text(out, "Name", k);
                element(out, "Value", v);
                out.push_str("</Attribute>");
            }
        }
        ("Tags", Value::Object(m)) => {
            for (k, v) in m {
                out.push_str("<Tag>");
                text(out, "Key", k);
                element(out, "Value", v);
                out.push_str("</Tag>");
            }
        }
        ("MessageAttributes", Value::Object(m)) => {
            for (k, v) in m {
                out.push_str("<MessageAttribute>");
                text(out, "Name", k);
                element_with(out, op, "Value", v);
                out.push_str("</MessageAttribute>");
            }
        }
        (_, Value::Object(_)) => element_with(out, op, name, value),
        _ => element(out, name, value),
    }
}

/// An element whose object members follow the member rules.
fn element_with(out: &mut String, op: &str, name: &str, value: &Value) {
    match value {
        Value::Object(fields) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in fields {
                member(out, op, k, v);
            }
            out.push_str(&format!("</{name}>"));
        }
        other => element(out, name, other),
    }
}

fn element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Null => {}
        Value::String(s) => text(out, name, s),
        Value::Bool(b) => text(out, name, if *b { "true" } else { "false" }),
        Value::Number(n) => text(out, name, &n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| element(out, name, v)),
        Value::Object(_) => element_with(out, "", name, value),
    }
}

fn text(out: &mut String, name: &str, s: &str) {
    out.push_str(&format!("<{name}>{}</{name}>", escape(s)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_output_has_no_result_element() {
        let x = response("DeleteQueue", &json!({}), "r1");
        assert_eq!(
            x,
            format!(
                "<?xml version=\"1.0\"?><DeleteQueueResponse xmlns=\"{SQS_XMLNS}\">\
                 <ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata>\
                 </DeleteQueueResponse>"
            )
        );
    }

    #[test]
    fn lists_maps_and_escaping() {
        let x = response(
            "ReceiveMessage",
            &json!({"Messages": [{
                "Body": "<a&b>",
                "Attributes": {"SenderId": "x"},
                "MessageAttributes": {"c": {"DataType": "String", "StringValue": "red"}}
            }]}),
            "r",
        );
        assert!(
            x.contains(
                "<ReceiveMessageResult><Message><Attribute><Name>SenderId</Name><Value>x</Value>\
             </Attribute><Body>&lt;a&amp;b&gt;</Body><MessageAttribute><Name>c</Name><Value>\
             <DataType>String</DataType><StringValue>red</StringValue></Value></MessageAttribute>\
             </Message></ReceiveMessageResult>"
            ),
            "{x}"
        );
        let x = response(
            "DeleteMessageBatch",
            &json!({"Successful": [{"Id": "a"}],
                    "Failed": [{"Id": "b", "SenderFault": true, "Code": "C", "Message": "m"}]}),
            "r",
        );
        assert!(
            x.contains("<DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>"),
            "{x}"
        );
        assert!(x.contains("<BatchResultErrorEntry><Code>C</Code><Id>b</Id><Message>m</Message><SenderFault>true</SenderFault></BatchResultErrorEntry>"), "{x}");
        let x = response("ListQueues", &json!({"QueueUrls": ["u1", "u2"]}), "r");
        assert!(x.contains("<QueueUrl>u1</QueueUrl><QueueUrl>u2</QueueUrl>"));
    }
}
