"""Writes the seed corpus seeds/requests/: real SQS and STS requests as botocore serializes and
signs them (JSON 1.0 for every operation boto3 sends, Query form posts and a presigned URL as
older SDKs send them), in the fuzz input form `METHOD TARGET\\n` + `name: value\\n` lines + an
empty line + body (bridge/src/fuzzing.rs).

    ../../.venv/bin/python request_seeds.py
"""

import json
import os
import urllib.parse

import botocore
import botocore.session
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.serialize import create_serializer

HOST = "localhost:4566"
URL = f"http://{HOST}/000000000000/orders"
FIFO = f"http://{HOST}/000000000000/orders.fifo"
CREDS = Credentials("guest", "guest")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "requests")

ATTRS = {
    "colour": {"DataType": "String", "StringValue": "red"},
    "n": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    "kind": {"DataType": "String.custom", "StringValue": "x"},
}
JSON_CALLS = {
    "CreateQueue": {"QueueName": "orders", "Attributes": {"VisibilityTimeout": "40",
                    "RedrivePolicy": json.dumps({"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq",
                                                 "maxReceiveCount": 3})},
                    "tags": {"team": "a"}},
    "CreateQueue_fifo": {"QueueName": "orders.fifo", "Attributes": {"FifoQueue": "true",
                         "ContentBasedDeduplication": "true"}},
    "GetQueueUrl": {"QueueName": "orders", "QueueOwnerAWSAccountId": "000000000000"},
    "ListQueues": {"QueueNamePrefix": "ord", "MaxResults": 10, "NextToken": "abc"},
    "DeleteQueue": {"QueueUrl": URL},
    "PurgeQueue": {"QueueUrl": URL},
    "GetQueueAttributes": {"QueueUrl": URL, "AttributeNames": ["All"]},
    "SetQueueAttributes": {"QueueUrl": URL, "Attributes": {"DelaySeconds": "5", "MaximumMessageSize": "1024"}},
    "SendMessage": {"QueueUrl": URL, "MessageBody": "hello \u00e9\u4e16", "DelaySeconds": 2,
                    "MessageAttributes": ATTRS,
                    "MessageSystemAttributes": {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-a"}}},
    "SendMessage_fifo": {"QueueUrl": FIFO, "MessageBody": "f", "MessageGroupId": "g",
                         "MessageDeduplicationId": "d"},
    "SendMessageBatch": {"QueueUrl": URL, "Entries": [
        {"Id": "a", "MessageBody": "one", "MessageAttributes": ATTRS},
        {"Id": "b", "MessageBody": "two", "DelaySeconds": 900}]},
    "ReceiveMessage": {"QueueUrl": URL, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 20,
                       "VisibilityTimeout": 30, "AttributeNames": ["All"],
                       "MessageSystemAttributeNames": ["SenderId"],
                       "MessageAttributeNames": ["All", "col.*"], "ReceiveRequestAttemptId": "x"},
    "DeleteMessage": {"QueueUrl": URL, "ReceiptHandle": "AAAAbm90IGEgaGFuZGxl"},
    "DeleteMessageBatch": {"QueueUrl": URL, "Entries": [{"Id": "a", "ReceiptHandle": "h1"},
                                                        {"Id": "b", "ReceiptHandle": "h2"}]},
    "ChangeMessageVisibility": {"QueueUrl": URL, "ReceiptHandle": "h", "VisibilityTimeout": 0},
    "ChangeMessageVisibilityBatch": {"QueueUrl": URL, "Entries": [
        {"Id": "a", "ReceiptHandle": "h", "VisibilityTimeout": 43200}]},
    "TagQueue": {"QueueUrl": URL, "Tags": {"a": "b"}},
    "UntagQueue": {"QueueUrl": URL, "TagKeys": ["a"]},
    "ListQueueTags": {"QueueUrl": URL},
    "ListDeadLetterSourceQueues": {"QueueUrl": URL, "MaxResults": 5},
    "StartMessageMoveTask": {"SourceArn": "arn:aws:sqs:us-east-1:000000000000:dlq",
                             "DestinationArn": "arn:aws:sqs:us-east-1:000000000000:orders",
                             "MaxNumberOfMessagesPerSecond": 50},
    "ListMessageMoveTasks": {"SourceArn": "arn:aws:sqs:us-east-1:000000000000:dlq", "MaxResults": 10},
    "CancelMessageMoveTask": {"TaskHandle": "eyJ0YXNrSWQiOiIxIn0="},
    "AddPermission": {"QueueUrl": URL, "Label": "l", "AWSAccountIds": ["111111111111"],
                      "Actions": ["SendMessage"]},
    "RemovePermission": {"QueueUrl": URL, "Label": "l"},
}
QUERY_CALLS = {
    "CreateQueue": "Action=CreateQueue&QueueName=orders&Attribute.1.Name=VisibilityTimeout"
                   "&Attribute.1.Value=40&Tag.1.Key=team&Tag.1.Value=a&Version=2012-11-05",
    "SendMessage": "Action=SendMessage&QueueUrl=" + urllib.parse.quote(URL, safe="") +
                   "&MessageBody=hi%20there&MessageAttribute.1.Name=colour"
                   "&MessageAttribute.1.Value.DataType=String&MessageAttribute.1.Value.StringValue=red"
                   "&MessageAttribute.2.Name=b&MessageAttribute.2.Value.DataType=Binary"
                   "&MessageAttribute.2.Value.BinaryValue=AAH%2F&Version=2012-11-05",
    "SendMessageBatch": "Action=SendMessageBatch&SendMessageBatchRequestEntry.1.Id=a"
                        "&SendMessageBatchRequestEntry.1.MessageBody=one"
                        "&SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=two"
                        "&SendMessageBatchRequestEntry.2.DelaySeconds=3&Version=2012-11-05",
    "ReceiveMessage": "Action=ReceiveMessage&MaxNumberOfMessages=10&WaitTimeSeconds=1"
                      "&AttributeName.1=All&MessageAttributeName.1=All&Version=2012-11-05",
    "DeleteMessageBatch": "Action=DeleteMessageBatch&DeleteMessageBatchRequestEntry.1.Id=a"
                          "&DeleteMessageBatchRequestEntry.1.ReceiptHandle=h&Version=2012-11-05",
    "SetQueueAttributes": "Action=SetQueueAttributes&Attribute.1.Name=DelaySeconds"
                          "&Attribute.1.Value=5&Version=2012-11-05",
    "ListQueues": "Action=ListQueues&QueueNamePrefix=o&MaxResults=3&Version=2012-11-05",
}


def write(name, req):
    prepared = req.prepare()
    target = prepared.url.split(HOST, 1)[1] or "/"
    head = f"{prepared.method} {target}\n"
    for k, v in prepared.headers.items():
        head += f"{k}: {v}\n"
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(head.encode() + b"\n" + body)


def main():
    os.makedirs(OUT, exist_ok=True)
    model = botocore.session.get_session().get_service_model("sqs")
    serializer = create_serializer("json")
    for call, params in JSON_CALLS.items():
        op = call.split("_")[0]
        s = serializer.serialize_to_request(params, model.operation_model(op))
        req = AWSRequest(method=s["method"], url=f"http://{HOST}/", data=s["body"],
                         headers=dict(s["headers"], Host=HOST))
        SigV4Auth(CREDS, "sqs", "us-east-1").add_auth(req)
        write(f"sqs_json_{call}", req)
    for call, body in QUERY_CALLS.items():
        path = "/" if call in ("CreateQueue", "ListQueues") else "/000000000000/orders"
        req = AWSRequest(method="POST", url=f"http://{HOST}{path}", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                                  "Host": HOST})
        SigV4Auth(CREDS, "sqs", "eu-west-1").add_auth(req)
        write(f"sqs_query_{call}", req)
    pre = AWSRequest(method="GET", url=f"http://{HOST}/?Action=GetQueueUrl&QueueName=orders&Version=2012-11-05",
                     headers={"Host": HOST})
    SigV4QueryAuth(CREDS, "sqs", "us-east-1", expires=300).add_auth(pre)
    write("sqs_query_presigned_GetQueueUrl", pre)
    sts = AWSRequest(method="POST", url=f"http://{HOST}/", data="Action=GetCallerIdentity&Version=2011-06-15",
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Host": HOST})
    SigV4Auth(CREDS, "sts", "us-east-1").add_auth(sts)
    write("sts_GetCallerIdentity", sts)
    print(f"wrote {len(os.listdir(OUT))} seeds with botocore {botocore.__version__}")


if __name__ == "__main__":
    main()
