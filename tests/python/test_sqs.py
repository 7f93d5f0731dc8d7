"""Amazon SQS against a real wharf: boto3 (JSON protocol), raw Query-protocol posts signed by
botocore, the aws command line, and pika on the same queues."""

import hashlib
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import boto3
import pika
import pytest
import stomp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import EXTERNAL_URL, WharfProcess

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="SQS tests need a wharf of their own")

ACCOUNT = "000000000000"
REGION = "us-east-1"
VHOST = f"aws:{ACCOUNT}:{REGION}"
XMLNS = {"s": "http://queue.amazonaws.com/doc/2012-11-05/"}


def client(broker, key="guest", secret="guest", region=REGION):
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{broker.http_port}",
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture(scope="module")
def sqs(broker):
    return client(broker)


@pytest.fixture
def qname():
    return f"q-{uuid.uuid4().hex[:12]}"


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def status(excinfo):
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_of_attributes(attrs):
    """The digest as the SQS developer guide defines it, written independently of wharf."""
    buf = b""
    for name in sorted(attrs):
        a = attrs[name]
        buf += struct.pack(">I", len(name.encode())) + name.encode()
        buf += struct.pack(">I", len(a["DataType"].encode())) + a["DataType"].encode()
        if "BinaryValue" in a:
            v = a["BinaryValue"]
            buf += b"\x02" + struct.pack(">I", len(v)) + v
        else:
            v = a["StringValue"].encode()
            buf += b"\x01" + struct.pack(">I", len(v)) + v
    return hashlib.md5(buf).hexdigest()


# -- queues -----------------------------------------------------------------------------------


def test_create_get_list_delete_queue(sqs, qname, broker):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    assert url == f"http://127.0.0.1:{broker.http_port}/{ACCOUNT}/{qname}"
    assert sqs.get_queue_url(QueueName=qname)["QueueUrl"] == url
    assert url in sqs.list_queues(QueueNamePrefix=qname)["QueueUrls"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as e:
        sqs.get_queue_url(QueueName=qname)
    assert code(e) == "AWS.SimpleQueueService.NonExistentQueue"
    assert status(e) == 400
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix=qname)


def test_create_queue_is_idempotent_and_conflicts_on_other_attributes(sqs, qname):
    a = sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "40"})["QueueUrl"]
    b = sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "40"})["QueueUrl"]
    assert a == b
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "41"})
    assert code(e) == "QueueAlreadyExists"
    assert status(e) == 400


def test_create_queue_bad_name_and_attributes(sqs):
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName="has space")
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}", Attributes={"DelaySeconds": "901"})
    assert code(e) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}", Attributes={"Colour": "red"})
    assert code(e) == "InvalidAttributeName"


def test_list_queues_prefix_and_pagination(sqs):
    prefix = f"page-{uuid.uuid4().hex[:8]}-"
    urls = sorted(sqs.create_queue(QueueName=f"{prefix}{i}")["QueueUrl"] for i in range(5))
    seen, token = [], None
    while True:
        kw = {"QueueNamePrefix": prefix, "MaxResults": 2}
        if token:
            kw["NextToken"] = token
        r = sqs.list_queues(**kw)
        assert len(r["QueueUrls"]) <= 2
        seen += r["QueueUrls"]
        token = r.get("NextToken")
        if not token:
            break
    assert seen == urls
    with pytest.raises(ClientError) as e:
        sqs.list_queues(MaxResults=1001)
    assert code(e) == "InvalidParameterValue"


def test_queue_attributes_set_get_and_computed(sqs, qname):
    url = sqs.create_queue(QueueName=qname, Attributes={"DelaySeconds": "0"})["QueueUrl"]
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": "120",
            "MessageRetentionPeriod": "3600",
            "MaximumMessageSize": "2048",
            "ReceiveMessageWaitTimeSeconds": "1",
        },
    )
    sqs.send_message(QueueUrl=url, MessageBody="one")
    sqs.send_message(QueueUrl=url, MessageBody="two", DelaySeconds=60)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "120"
    assert attrs["MessageRetentionPeriod"] == "3600"
    assert attrs["MaximumMessageSize"] == "2048"
    assert attrs["QueueArn"] == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{qname}"
    assert attrs["ApproximateNumberOfMessages"] == "1"
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert int(attrs["CreatedTimestamp"]) <= int(attrs["LastModifiedTimestamp"]) <= time.time() + 1
    sqs.receive_message(QueueUrl=url)
    only = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert only == {"ApproximateNumberOfMessagesNotVisible": "1"}
    for name, bad in [("VisibilityTimeout", "43201"), ("MessageRetentionPeriod", "59"),
                      ("MaximumMessageSize", "1023"), ("ReceiveMessageWaitTimeSeconds", "21")]:
        with pytest.raises(ClientError) as e:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={name: bad})
        assert code(e) == "InvalidAttributeValue", name
    with pytest.raises(ClientError) as e:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Nope"])
    assert code(e) == "InvalidAttributeName"


# -- messages ---------------------------------------------------------------------------------


def test_send_receive_delete_with_attributes_and_digests(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    attrs = {
        "colour": {"DataType": "String", "StringValue": "blue"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff\x10"},
        "meta.x": {"DataType": "String.custom", "StringValue": "x"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody="hello wharf", MessageAttributes=attrs)
    assert sent["MD5OfMessageBody"] == hashlib.md5(b"hello wharf").hexdigest()
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(attrs)
    r = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    (m,) = r["Messages"]
    assert m["MessageId"] == sent["MessageId"]
    assert m["Body"] == "hello wharf"
    assert m["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert m["MessageAttributes"] == attrs
    assert m["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    a = m["Attributes"]
    assert a["ApproximateReceiveCount"] == "1"
    assert a["SenderId"] == "guest"
    assert abs(int(a["SentTimestamp"]) / 1000 - time.time()) < 60
    assert int(a["ApproximateFirstReceiveTimestamp"]) >= int(a["SentTimestamp"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)


def test_receive_selects_attributes_by_name_and_prefix(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    attrs = {n: {"DataType": "String", "StringValue": n} for n in ["a.one", "a.two", "b"]}
    sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=attrs)
    (m,) = sqs.receive_message(
        QueueUrl=url, MessageAttributeNames=["a.*"], AttributeNames=["SentTimestamp"],
        VisibilityTimeout=0,
    )["Messages"]
    assert set(m["MessageAttributes"]) == {"a.one", "a.two"}
    assert m["MD5OfMessageAttributes"] == md5_of_attributes({k: attrs[k] for k in ["a.one", "a.two"]})
    assert set(m["Attributes"]) == {"SentTimestamp"}
    (m,) = sqs.receive_message(QueueUrl=url)["Messages"]
    assert "MessageAttributes" not in m and "Attributes" not in m


def test_send_message_validation(sqs, qname):
    url = sqs.create_queue(QueueName=qname, Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1025)
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="bad \x01 char")
    assert code(e) == "InvalidMessageContents"
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901)
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x",
                         MessageAttributes={"n": {"DataType": "Number", "StringValue": "abc"}})
    assert code(e) == "InvalidParameterValue"


def test_send_message_batch_with_a_failing_entry(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    r = sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "ok1", "MessageBody": "one"},
        {"Id": "bad", "MessageBody": "late", "DelaySeconds": 1000},
        {"Id": "ok2", "MessageBody": "two",
         "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
    ])
    assert sorted(s["Id"] for s in r["Successful"]) == ["ok1", "ok2"]
    ok2 = next(s for s in r["Successful"] if s["Id"] == "ok2")
    assert ok2["MD5OfMessageBody"] == hashlib.md5(b"two").hexdigest()
    assert ok2["MD5OfMessageAttributes"] == md5_of_attributes({"k": {"DataType": "String", "StringValue": "v"}})
    (f,) = r["Failed"]
    assert f["Id"] == "bad" and f["SenderFault"] is True and f["Code"] == "InvalidParameterValue"
    bodies = {m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]}
    assert bodies == {"one", "two"}


@pytest.mark.parametrize("entries,expected", [
    ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
    ([{"Id": f"e{i}", "MessageBody": "x"} for i in range(11)],
     "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
    ([{"Id": "same", "MessageBody": "x"}, {"Id": "same", "MessageBody": "y"}],
     "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
    ([{"Id": "not valid!", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
])
def test_send_message_batch_request_errors(sqs, qname, entries, expected):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    with pytest.raises(ClientError) as e:
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert code(e) == expected
    assert status(e) == 400


def test_batch_total_is_capped_at_1_mib_whatever_the_queue_maximum(sqs, qname):
    # AWS: the batch's total may reach the service ceiling (1 MiB); each message is still held
    # to the queue's MaximumMessageSize.
    small = sqs.create_queue(QueueName=qname, Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    r = sqs.send_message_batch(QueueUrl=small, Entries=[
        {"Id": f"e{i}", "MessageBody": "x" * 600} for i in range(2)])
    assert len(r["Successful"]) == 2 and not r.get("Failed")
    r = sqs.send_message_batch(QueueUrl=small, Entries=[
        {"Id": "fits", "MessageBody": "x" * 1000}, {"Id": "big", "MessageBody": "x" * 1025}])
    assert [e["Id"] for e in r["Successful"]] == ["fits"]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in r["Failed"]] == \
        [("big", "InvalidParameterValue", True)]
    url = sqs.create_queue(QueueName=f"{qname}-big")["QueueUrl"]
    # Exactly 1 MiB in four messages of the default maximum (256 KiB) each: accepted.
    r = sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": f"e{i}", "MessageBody": "x" * 262_144} for i in range(4)])
    assert len(r["Successful"]) == 4
    with pytest.raises(ClientError) as e:
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": f"e{i}", "MessageBody": "x" * 262_144} for i in range(4)]
            + [{"Id": "one-more", "MessageBody": "x"}])
    assert code(e) == "AWS.SimpleQueueService.BatchRequestTooLong"
    assert status(e) == 400
    assert "1048576" in e.value.response["Error"]["Message"]


def test_receive_limits(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": f"e{i}", "MessageBody": str(i)} for i in range(10)])
    sqs.send_message(QueueUrl=url, MessageBody="10")
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(got) == 10
    for bad in [{"MaxNumberOfMessages": 11}, {"MaxNumberOfMessages": 0},
                {"WaitTimeSeconds": 21}, {"VisibilityTimeout": 43201}]:
        with pytest.raises(ClientError) as e:
            sqs.receive_message(QueueUrl=url, **bad)
        assert code(e) == "InvalidParameterValue", bad


def test_visibility_timeout_returns_the_message(sqs, qname):
    url = sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="again")
    first = sqs.receive_message(QueueUrl=url)["Messages"][0]
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    time.sleep(1.5)
    second = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert second["MessageId"] == first["MessageId"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    # The stale handle deletes nothing (and does not fail); the fresh one deletes.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])[
        "Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    time.sleep(1.5)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)


def test_change_message_visibility_and_batch(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "a"}, {"Id": "b", "MessageBody": "b"}])
    ms = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=300)["Messages"]
    assert len(ms) == 2
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=ms[0]["ReceiptHandle"], VisibilityTimeout=0)
    back = sqs.receive_message(QueueUrl=url, VisibilityTimeout=300)["Messages"]
    assert back[0]["MessageId"] == ms[0]["MessageId"]
    r = sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
        {"Id": "ok", "ReceiptHandle": ms[1]["ReceiptHandle"], "VisibilityTimeout": 0},
        {"Id": "gone", "ReceiptHandle": ms[0]["ReceiptHandle"], "VisibilityTimeout": 0},
        {"Id": "junk", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 0},
    ])
    assert [s["Id"] for s in r["Successful"]] == ["ok"]
    failed = {f["Id"]: f["Code"] for f in r["Failed"]}
    assert failed == {"gone": "AWS.SimpleQueueService.MessageNotInflight", "junk": "ReceiptHandleIsInvalid"}
    with pytest.raises(ClientError) as e:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=back[0]["ReceiptHandle"], VisibilityTimeout=43201)
    assert code(e) == "InvalidParameterValue"


def test_visibility_is_capped_at_12_hours_from_the_receive(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="long job")
    m = sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"][0]
    time.sleep(1.1)
    # 43200 s from now would end more than 12 hours after the receive.
    with pytest.raises(ClientError) as e:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=43200)
    assert code(e) == "InvalidParameterValue"
    assert "43200" in e.value.response["Error"]["Message"]
    # Within the 12 hours it may still be extended.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=43000)


def test_delete_message_batch(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(3)])
    ms = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    entries = [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ms)]
    entries.append({"Id": "bad", "ReceiptHandle": "%%%"})
    r = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    assert len(r["Successful"]) == 3
    assert r["Failed"][0]["Id"] == "bad" and r["Failed"][0]["Code"] == "ReceiptHandleIsInvalid"
    with pytest.raises(ClientError) as e:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="garbage")
    assert code(e) == "ReceiptHandleIsInvalid"


def test_long_poll_returns_as_soon_as_a_message_arrives(broker, sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sender = client(broker)

    def send_later():
        time.sleep(1.0)
        sender.send_message(QueueUrl=url, MessageBody="late")

    t = threading.Thread(target=send_later)
    start = time.monotonic()
    t.start()
    r = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=15)
    elapsed = time.monotonic() - start
    t.join()
    assert r["Messages"][0]["Body"] == "late"
    assert 0.9 <= elapsed < 5, elapsed


def test_long_poll_waits_when_empty(sqs, qname):
    url = sqs.create_queue(QueueName=qname, Attributes={"ReceiveMessageWaitTimeSeconds": "2"})["QueueUrl"]
    start = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    assert 1.9 <= time.monotonic() - start < 5


def test_delay_seconds(sqs, qname):
    url = sqs.create_queue(QueueName=qname, Attributes={"DelaySeconds": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="queue delay")
    sqs.send_message(QueueUrl=url, MessageBody="no delay", DelaySeconds=0)
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in first] == ["no delay"]
    time.sleep(1.5)
    later = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in later] == ["queue delay"]


def test_purge_queue(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(4)])
    sqs.purge_queue(QueueUrl=url)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    with pytest.raises(ClientError) as e:
        sqs.purge_queue(QueueUrl=url)
    assert code(e) == "AWS.SimpleQueueService.PurgeQueueInProgress"


def test_purge_queue_removes_in_flight_messages_and_their_receipts_go_stale(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=300)["Messages"]
    assert len(received) == 2
    sqs.purge_queue(QueueUrl=url)
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "0"
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
    # The purged messages' handles are stale: deleting succeeds and does nothing, changing
    # visibility fails as for any message no longer in flight.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"])
    with pytest.raises(ClientError) as e:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=received[1]["ReceiptHandle"],
                                      VisibilityTimeout=0)
    assert code(e) == "AWS.SimpleQueueService.MessageNotInflight"
    # Nothing purged comes back; what is sent afterwards is received.
    sqs.send_message(QueueUrl=url, MessageBody="after")
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)["Messages"]
    assert [m["Body"] for m in got] == ["after"]


def test_create_queue_refused_within_60_seconds_of_deleting_that_name(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=qname)
    assert code(e) == "AWS.SimpleQueueService.QueueDeletedRecently"
    assert status(e) == 400
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix=qname)
    # Other names are not affected.
    sqs.create_queue(QueueName=f"{qname}-other")


def test_tags(sqs, qname):
    url = sqs.create_queue(QueueName=qname, tags={"team": "core"})["QueueUrl"]
    sqs.tag_queue(QueueUrl=url, Tags={"env": "test", "team": "infra"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "test", "team": "infra"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["team"])
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "test"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert "Tags" not in sqs.list_queue_tags(QueueUrl=url)


def test_redrive_policy_moves_to_dead_letter_queue(sqs, qname):
    dlq = sqs.create_queue(QueueName=f"{qname}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [url]
    sent = sqs.send_message(QueueUrl=url, MessageBody="poison")
    for _ in range(2):
        assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]["Body"] == "poison"
    assert "Messages" not in sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
    moved = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=2)["Messages"][0]
    assert moved["Body"] == "poison"
    assert moved["MessageId"] == sent["MessageId"]
    bad = json.dumps({"deadLetterTargetArn": dlq_arn + "-missing", "maxReceiveCount": 2})
    with pytest.raises(ClientError) as e:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": bad})
    assert code(e) == "InvalidParameterValue"


def test_nonexistent_queue_everywhere(sqs, broker):
    url = f"http://127.0.0.1:{broker.http_port}/{ACCOUNT}/missing-{uuid.uuid4().hex[:6]}"
    for call in [
        lambda: sqs.send_message(QueueUrl=url, MessageBody="x"),
        lambda: sqs.receive_message(QueueUrl=url),
        lambda: sqs.get_queue_attributes(QueueUrl=url),
        lambda: sqs.delete_queue(QueueUrl=url),
        lambda: sqs.purge_queue(QueueUrl=url),
    ]:
        with pytest.raises(sqs.exceptions.QueueDoesNotExist) as e:
            call()
        assert code(e) == "AWS.SimpleQueueService.NonExistentQueue"
    # Another account's URL is not ours either.
    with pytest.raises(ClientError) as e:
        sqs.get_queue_attributes(QueueUrl=url.replace(ACCOUNT, "111111111111"))
    assert code(e) == "AWS.SimpleQueueService.NonExistentQueue"


# -- authentication ---------------------------------------------------------------------------


def test_bad_signature_and_unknown_key(broker):
    with pytest.raises(ClientError) as e:
        client(broker, secret="not-the-secret").list_queues()
    assert code(e) == "SignatureDoesNotMatch" and status(e) == 403
    with pytest.raises(ClientError) as e:
        client(broker, key="AKIAUNKNOWN", secret="x").list_queues()
    assert code(e) == "InvalidClientTokenId" and status(e) == 403


def test_unsigned_request_is_refused(broker):
    req = urllib.request.Request(
        f"http://127.0.0.1:{broker.http_port}/",
        data=b"{}",
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.ListQueues"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 403
    assert e.value.headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"


def signed_post(broker, body, headers, key="guest", secret="guest", path="/"):
    url = f"http://127.0.0.1:{broker.http_port}{path}"
    req = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(key, secret), "sqs", REGION).add_auth(req)
    r = urllib.request.Request(url, data=body.encode(), headers=dict(req.headers.items()))
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_unknown_operations_answer_as_aws(broker):
    st, h, body = signed_post(broker, "{}", {
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.NoSuchThing"})
    assert st == 400
    assert json.loads(body)["__type"].endswith("UnknownOperationException")
    st, h, body = signed_post(broker, "Action=NoSuchThing&Version=2012-11-05",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 400
    err = ET.fromstring(body).find("s:Error", XMLNS)
    assert err.find("s:Code", XMLNS).text == "InvalidAction"


def test_malformed_json_body(broker):
    st, h, body = signed_post(broker, "{not json", {
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.ListQueues"})
    assert st == 400
    assert json.loads(body)["__type"].endswith("SerializationException")


# -- Query protocol ---------------------------------------------------------------------------


def test_query_protocol_round_trip(broker, qname):
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    st, _, body = signed_post(
        broker, f"Action=CreateQueue&Version=2012-11-05&QueueName={qname}"
        "&Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=45&Tag.1.Key=k&Tag.1.Value=v", form)
    assert st == 200, body
    url = ET.fromstring(body).find("s:CreateQueueResult/s:QueueUrl", XMLNS).text
    path = "/" + url.split("/", 3)[3]
    # Older clients post to the queue URL itself.
    st, _, body = signed_post(
        broker, "Action=SendMessage&MessageBody=via%20query&MessageAttribute.1.Name=a"
        "&MessageAttribute.1.Value.DataType=String&MessageAttribute.1.Value.StringValue=b", form, path=path)
    assert st == 200, body
    md5 = ET.fromstring(body).find("s:SendMessageResult/s:MD5OfMessageBody", XMLNS).text
    assert md5 == hashlib.md5(b"via query").hexdigest()
    st, _, body = signed_post(
        broker, f"Action=ReceiveMessage&QueueUrl={url}&MessageAttributeName.1=All&AttributeName.1=All", form)
    assert st == 200, body
    msg = ET.fromstring(body).find("s:ReceiveMessageResult/s:Message", XMLNS)
    assert msg.find("s:Body", XMLNS).text == "via query"
    attrs = {a.find("s:Name", XMLNS).text: a.find("s:Value", XMLNS).text for a in msg.findall("s:Attribute", XMLNS)}
    assert attrs["ApproximateReceiveCount"] == "1"
    ma = msg.find("s:MessageAttribute", XMLNS)
    assert ma.find("s:Name", XMLNS).text == "a"
    assert ma.find("s:Value/s:StringValue", XMLNS).text == "b"
    st, _, body = signed_post(broker, f"Action=GetQueueAttributes&QueueUrl={url}&AttributeName.1=VisibilityTimeout", form)
    attr = ET.fromstring(body).find("s:GetQueueAttributesResult/s:Attribute", XMLNS)
    assert attr.find("s:Value", XMLNS).text == "45"
    st, _, body = signed_post(broker, "Action=GetQueueUrl&QueueName=missing-xyz", form)
    assert st == 400
    assert ET.fromstring(body).find("s:Error/s:Code", XMLNS).text == "AWS.SimpleQueueService.NonExistentQueue"


# -- aws command line -------------------------------------------------------------------------


def test_aws_cli(broker, qname, tmp_path):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="guest", AWS_SECRET_ACCESS_KEY="guest",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    aws = [sys.executable, "-m", "awscli", "sqs", "--endpoint-url", f"http://127.0.0.1:{broker.http_port}",
           "--output", "json"]

    def run(*args):
        out = subprocess.run(aws + list(args), env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    url = run("create-queue", "--queue-name", qname)["QueueUrl"]
    sent = run("send-message", "--queue-url", url, "--message-body", "from the cli")
    assert sent["MD5OfMessageBody"] == hashlib.md5(b"from the cli").hexdigest()
    got = run("receive-message", "--queue-url", url, "--wait-time-seconds", "1")
    assert got["Messages"][0]["Body"] == "from the cli"
    run("delete-message", "--queue-url", url, "--receipt-handle", got["Messages"][0]["ReceiptHandle"])
    assert run("get-queue-attributes", "--queue-url", url, "--attribute-names", "ApproximateNumberOfMessages")[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"
    run("delete-queue", "--queue-url", url)
    bad = subprocess.run(aws + ["get-queue-url", "--queue-name", qname], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "NonExistentQueue" in bad.stderr


# -- one engine: AMQP and SQS on the same queue -----------------------------------------------


def amqp(broker):
    return pika.BlockingConnection(broker.params(virtual_host=VHOST))


def test_amqp_publish_reaches_sqs_receiver(broker, sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    conn = amqp(broker)
    try:
        ch = conn.channel()
        ch.basic_publish("", qname, b"from amqp",
                         pika.BasicProperties(headers={"colour": "red", "n": 7}, delivery_mode=2))
    finally:
        conn.close()
    m = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MessageAttributeNames=["All"])["Messages"][0]
    assert m["Body"] == "from amqp"
    assert m["MessageAttributes"]["colour"] == {"StringValue": "red", "DataType": "String"}
    assert m["MessageAttributes"]["n"] == {"StringValue": "7", "DataType": "Number"}
    assert m["MD5OfBody"] == hashlib.md5(b"from amqp").hexdigest()
    assert m["MD5OfMessageAttributes"] == md5_of_attributes(m["MessageAttributes"])


def test_sqs_message_reaches_amqp_consumer(broker, sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="from sqs", MessageAttributes={
        "colour": {"DataType": "String", "StringValue": "green"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"}})
    conn = amqp(broker)
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(qname, auto_ack=False)
        assert body == b"from sqs"
        assert props.message_id == sent["MessageId"]
        assert props.headers["colour"] in ("green", b"green")
        assert props.headers["blob"] == b"\x01\x02"
        assert props.delivery_mode == 2
        ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)


# -- one engine: STOMP and SQS on the same queue ----------------------------------------------


class StompListener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.errors = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame):
        self.errors.put(frame)


class StompClient:
    """stomp.py 1.2 in the SQS vhost: the host header names the vhost (docs/mapping/stomp.md)."""

    def __init__(self, broker):
        self.c = stomp.Connection12([(broker.host, broker.stomp_port)], vhost=VHOST,
                                    reconnect_attempts_max=1)
        self.l = StompListener()
        self.c.set_listener("", self.l)
        self.c.connect("guest", "guest", wait=True)

    def _receipt(self, r):
        # A RECEIPT proves the frame was processed (a SEND's only once it is durable).
        assert self.l.receipts.get(timeout=5) == r, self.l.errors.queue

    def send(self, dest, body, **headers):
        r = uuid.uuid4().hex
        self.c.send(dest, body, headers=dict(headers, receipt=r))
        self._receipt(r)

    def subscribe(self, dest, sid="1", ack="client-individual"):
        r = uuid.uuid4().hex
        self.c.subscribe(dest, id=sid, ack=ack, headers={"receipt": r})
        self._receipt(r)

    def message(self):
        return self.l.messages.get(timeout=5)

    def close(self):
        if self.c.is_connected():
            self.c.disconnect()


def test_stomp_send_reaches_sqs_receiver_with_headers_as_attributes(broker, sqs, qname):
    # The vhost exists once SQS created a queue in it; then STOMP declares this queue (as /queue/
    # does on first use) and SQS sees it with default attributes.
    sqs.create_queue(QueueName=f"{qname}-first")
    s = StompClient(broker)
    try:
        s.send(f"/queue/{qname}", "from stomp", colour="red", count="7",
               **{"content-type": "text/plain", "persistent": "true", "amqp-message-id": "m-1",
                  "user-id": "guest"})
    finally:
        s.close()
    url = sqs.get_queue_url(QueueName=qname)["QueueUrl"]
    r = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MessageAttributeNames=["All"],
                            AttributeNames=["All"])
    m = r["Messages"][0]
    assert m["Body"] == "from stomp"
    # Every STOMP header that is not a property or a frame header is a String attribute
    # (STOMP has only text, so "7" is not a Number).
    assert m["MessageAttributes"] == {
        "colour": {"StringValue": "red", "DataType": "String"},
        "count": {"StringValue": "7", "DataType": "String"},
    }
    assert m["MessageId"] == "m-1"
    assert m["Attributes"]["SenderId"] == "guest"
    assert m["MD5OfBody"] == hashlib.md5(b"from stomp").hexdigest()
    assert m["MD5OfMessageAttributes"] == md5_of_attributes(m["MessageAttributes"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url)


@pytest.mark.parametrize("prefix", ["/queue/", "/amq/queue/"])
def test_sqs_message_reaches_stomp_subscriber_with_attributes_as_headers(broker, sqs, qname, prefix):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    s = StompClient(broker)
    try:
        s.subscribe(f"{prefix}{qname}")
        sent = sqs.send_message(QueueUrl=url, MessageBody="from sqs", MessageAttributes={
            "colour": {"DataType": "String", "StringValue": "green"},
            "n": {"DataType": "Number", "StringValue": "42"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"}},
            MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String",
                                                         "StringValue": "Root=1-abc"}})
        m = s.message()
        assert m.body == "from sqs"
        h = m.headers
        assert h["colour"] == "green"
        assert h["n"] == "42"
        # Binary has no STOMP text form and the remembered data-type table neither: dropped.
        assert "blob" not in h
        assert "x-sqs-data-types" not in h
        assert h["x-amzn-trace-id"] == "Root=1-abc"
        assert h["amqp-message-id"] == sent["MessageId"]
        assert h["persistent"] == "true"
        # The destination names how it was routed (default exchange), as RabbitMQ writes it.
        assert h["destination"] == f"/queue/{qname}"
        # While the STOMP delivery is unacked the message is in flight for SQS too.
        assert "Messages" not in sqs.receive_message(QueueUrl=url)
        s.c.ack(h["ack"])
        # An ack is not confirmed by a receipt in every version: poll the count.
        deadline = time.time() + 5
        while time.time() < deadline:
            a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            if a["ApproximateNumberOfMessagesNotVisible"] == "0":
                break
            time.sleep(0.05)
        assert a["ApproximateNumberOfMessages"] == "0"
        assert a["ApproximateNumberOfMessagesNotVisible"] == "0"
    finally:
        s.close()


def test_fifo_group_id_reaches_stomp_and_back(broker, sqs, qname):
    url = fifo_queue(sqs, qname)
    s = StompClient(broker)
    try:
        s.subscribe(f"/amq/queue/{qname}.fifo")
        sqs.send_message(QueueUrl=url, MessageBody="g", MessageGroupId="grp",
                         MessageDeduplicationId="d1")
        h = s.message().headers
        assert h["x-message-group-id"] == "grp"
        assert h["x-message-deduplication-id"] == "d1"
        assert h["x-sqs-sequence-number"].isdigit()
    finally:
        s.close()


def test_fifo_group_held_for_a_stomp_subscriber(broker, sqs, qname):
    url = fifo_queue(sqs, qname, ContentBasedDeduplication="true")
    for group, body in [("a", "a1"), ("a", "a2"), ("b", "b1")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
    s = StompClient(broker)
    try:
        s.subscribe(f"/amq/queue/{qname}.fifo")
        # Queue order is a1, a2, b1, but a2 waits while a1 is unacked: b1 comes second.
        first, second = s.message(), s.message()
        assert [first.body, second.body] == ["a1", "b1"]
        s.c.ack(first.headers["ack"])
        assert s.message().body == "a2"
    finally:
        s.close()


# -- sigv4 off, durability ----------------------------------------------------------------------


def test_sigv4_off_accepts_any_key_and_12_digit_keys_name_the_account(tmp_path):
    b = WharfProcess(tmp_path / "data", extra_args=["--sigv4", "off"]).start()
    try:
        anyone = client(b, key="whoever", secret="whatever")
        url = anyone.create_queue(QueueName="open")["QueueUrl"]
        assert f"/{ACCOUNT}/open" in url
        other = client(b, key="123456789012", secret="x")
        url2 = other.create_queue(QueueName="open")["QueueUrl"]
        assert "/123456789012/open" in url2
        other.send_message(QueueUrl=url2, MessageBody="mine")
        assert "Messages" not in anyone.receive_message(QueueUrl=url)
        # Regions are separate too.
        assert "QueueUrls" not in client(b, key="whoever", secret="x", region="eu-west-1").list_queues()
    finally:
        b.stop_quietly()


@pytest.mark.restart
def test_sent_messages_survive_sigkill(own_broker):
    sqs = client(own_broker)
    url = sqs.create_queue(QueueName="durable", Attributes={"VisibilityTimeout": "3"})["QueueUrl"]
    for i in range(20):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    sqs.tag_queue(QueueUrl=url, Tags={"kept": "yes"})
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    url = sqs.get_queue_url(QueueName="durable")["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])[
        "Attributes"]["VisibilityTimeout"] == "3"
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"kept": "yes"}
    bodies = set()
    while True:
        r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        if "Messages" not in r:
            break
        for m in r["Messages"]:
            bodies.add(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert bodies == {f"m{i}" for i in range(20)}


def receive_bodies(sqs, url, wait=0):
    r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                            MessageAttributeNames=["All"])
    return {m["Body"]: m for m in r.get("Messages", [])}


@pytest.mark.restart
def test_in_flight_and_delayed_messages_across_sigkill(own_broker):
    sqs = client(own_broker)
    url = sqs.create_queue(QueueName="leases", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    sqs.send_message(QueueUrl=url, MessageBody="deleted")
    got = {}
    deadline = time.time() + 5
    while len(got) < 2 and time.time() < deadline:
        got.update(receive_bodies(sqs, url, wait=1))
    assert set(got) == {"kept", "deleted"}
    # "kept" is in flight for 10 minutes; "later" is delayed for 10 s.
    assert receive_bodies(sqs, url) == {}
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=10)
    sent_at = time.time()
    # Deleted just before the kill: its 200 must mean the deletion is on disk.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got["deleted"]["ReceiptHandle"])
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    # In flight: visible again no later than its deadline (at once, in fact); deleted: gone.
    after = receive_bodies(sqs, url, wait=2)
    assert set(after) == {"kept"}
    sqs.delete_message(QueueUrl=url, ReceiptHandle=after["kept"]["ReceiptHandle"])
    # Delayed: still delayed after the restart, then ready at its time (not before).
    assert time.time() - sent_at < 8, "restart too slow for this check"
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert receive_bodies(sqs, url) == {}
    later = {}
    while not later and time.time() < sent_at + 25:
        later = receive_bodies(sqs, url, wait=5)
    assert set(later) == {"later"}
    assert time.time() >= sent_at + 9.5
    # The header carrying the delay is internal: not a message attribute.
    assert "MessageAttributes" not in later["later"]


# -- FIFO -------------------------------------------------------------------------------------


def fifo_queue(sqs, qname, **attrs):
    attributes = {"FifoQueue": "true", **attrs}
    return sqs.create_queue(QueueName=f"{qname}.fifo", Attributes=attributes)["QueueUrl"]


def test_fifo_names_and_required_parameters(sqs, qname):
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=f"{qname}.fifo")
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName=qname, Attributes={"FifoQueue": "true"})
    assert code(e) == "InvalidParameterValue"
    url = fifo_queue(sqs, qname)
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])["Attributes"] == {"FifoQueue": "true"}
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert code(e) == "MissingParameter"
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", MessageDeduplicationId="d",
                         DelaySeconds=5)
    assert code(e) == "InvalidParameterValue"


def test_fifo_deduplication(sqs, qname):
    url = fifo_queue(sqs, qname)
    a = sqs.send_message(QueueUrl=url, MessageBody="one", MessageGroupId="g", MessageDeduplicationId="d1")
    b = sqs.send_message(QueueUrl=url, MessageBody="one again", MessageGroupId="g", MessageDeduplicationId="d1")
    assert a["MessageId"] == b["MessageId"] and a["SequenceNumber"] == b["SequenceNumber"]
    cbd = fifo_queue(sqs, qname + "-cbd", ContentBasedDeduplication="true")
    c = sqs.send_message(QueueUrl=cbd, MessageBody="same body", MessageGroupId="g")
    d = sqs.send_message(QueueUrl=cbd, MessageBody="same body", MessageGroupId="h")
    e = sqs.send_message(QueueUrl=cbd, MessageBody="other body", MessageGroupId="g")
    assert c["MessageId"] == d["MessageId"] != e["MessageId"]
    assert int(e["SequenceNumber"]) > int(c["SequenceNumber"])
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == ["one"]
    got = sqs.receive_message(QueueUrl=cbd, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == ["same body", "other body"]


@pytest.mark.restart
def test_fifo_deduplication_window_survives_sigkill(own_broker):
    sqs = client(own_broker)
    url = sqs.create_queue(QueueName="dd.fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    by_id = sqs.send_message(QueueUrl=url, MessageBody="one", MessageGroupId="g",
                             MessageDeduplicationId="d1")
    by_body = sqs.send_message(QueueUrl=url, MessageBody="two", MessageGroupId="g")
    # Received and deleted: the window outlives the message itself.
    for _ in range(2):
        m = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2)["Messages"][0]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    again = sqs.send_message(QueueUrl=url, MessageBody="other body", MessageGroupId="g",
                             MessageDeduplicationId="d1")
    assert (again["MessageId"], again["SequenceNumber"]) == (by_id["MessageId"],
                                                             by_id["SequenceNumber"])
    again = sqs.send_message(QueueUrl=url, MessageBody="two", MessageGroupId="g")
    assert again["MessageId"] == by_body["MessageId"]
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    fresh = sqs.send_message(QueueUrl=url, MessageBody="three", MessageGroupId="g")
    assert fresh["MessageId"] not in (by_id["MessageId"], by_body["MessageId"])
    assert int(fresh["SequenceNumber"]) > int(by_body["SequenceNumber"])
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2)["Messages"][0]["Body"] == "three"


def test_fifo_order_and_group_held_while_in_flight(sqs, qname):
    url = fifo_queue(sqs, qname, ContentBasedDeduplication="true")
    for group, body in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"), ("b", "b2")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in first] == ["a1", "b1"]
    assert first[0]["Attributes"]["MessageGroupId"] == "a"
    assert "SequenceNumber" in first[0]["Attributes"]
    assert "MessageDeduplicationId" in first[0]["Attributes"]
    # Both groups have a message in flight: nothing else may be received.
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    nxt = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in nxt] == ["a2", "a3"]
    # Making b1 visible again puts it back first in its group.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first[1]["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in again] == ["b1", "b2"]


def test_fifo_receive_request_attempt_id_replays_the_same_answer(sqs, qname):
    url = fifo_queue(sqs, qname, ContentBasedDeduplication="true")
    for group, body in [("a", "a1"), ("b", "b1")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)

    def receive(attempt):
        return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300,
                                   AttributeNames=["All"], ReceiveRequestAttemptId=attempt).get("Messages", [])

    first = receive("attempt-1")
    assert [m["Body"] for m in first] == ["a1", "b1"]
    # The retry (a lost answer) gets the same messages and receipt handles, not a new receive.
    retry = receive("attempt-1")
    assert [(m["MessageId"], m["ReceiptHandle"]) for m in retry] == \
        [(m["MessageId"], m["ReceiptHandle"]) for m in first]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in retry] == ["1", "1"]
    # Another attempt is a new receive: both groups are held.
    assert receive("attempt-2") == []
    # Once one of its messages is deleted, the attempt is not replayed any more: a retry is an
    # ordinary receive, which now finds group a's next message.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    sqs.send_message(QueueUrl=url, MessageBody="a2", MessageGroupId="a")
    assert [m["Body"] for m in receive("attempt-1")] == ["a2"]
    with pytest.raises(ClientError) as e:
        receive("x" * 129)
    assert code(e) == "InvalidParameterValue"


@pytest.mark.restart
def test_fifo_receive_request_attempt_id_replays_after_sigkill(own_broker):
    sqs = client(own_broker)
    url = sqs.create_queue(QueueName="att.fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    for group, body in [("a", "a1"), ("b", "b1"), ("a", "a2")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)

    def receive(sqs, attempt):
        return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=300,
                                   AttributeNames=["All"], ReceiveRequestAttemptId=attempt).get("Messages", [])

    first = receive(sqs, "lost-answer")
    assert [m["Body"] for m in first] == ["a1", "b1"]
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    # The answer's messages are still in flight after the restart: their groups stay held.
    assert receive(sqs, "another") == []
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == ("1", "2")
    # The retry gets the same messages and receipt handles back...
    retry = receive(sqs, "lost-answer")
    assert [(m["MessageId"], m["ReceiptHandle"], m["Body"]) for m in retry] == \
        [(m["MessageId"], m["ReceiptHandle"], m["Body"]) for m in first]
    # ...and those handles work on the new process: a1 deleted, b1 made visible again.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=retry[0]["ReceiptHandle"])
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=retry[1]["ReceiptHandle"],
                                  VisibilityTimeout=0)
    nxt = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in nxt) == ["a2", "b1"]
    # Changed and deleted: the attempt is not replayed any more, after a second kill either.
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    assert sorted(m["Body"] for m in receive(sqs, "lost-answer")) == ["a2", "b1"]


@pytest.mark.restart
def test_deleted_queue_name_still_refused_after_sigkill(own_broker):
    sqs = client(own_broker)
    url = sqs.create_queue(QueueName="gone")["QueueUrl"]
    sqs.create_queue(QueueName="kept")
    sqs.delete_queue(QueueUrl=url)
    deleted_at = time.time()
    own_broker.restart(kill=True)
    sqs = client(own_broker)
    assert time.time() - deleted_at < 50, "restart too slow for this check"
    with pytest.raises(ClientError) as e:
        sqs.create_queue(QueueName="gone")
    assert code(e) == "AWS.SimpleQueueService.QueueDeletedRecently"
    assert sqs.get_queue_url(QueueName="kept")["QueueUrl"].endswith("/kept")


def test_fifo_group_held_for_amqp_consumers_and_basic_get(broker, sqs, qname):
    url = fifo_queue(sqs, qname, ContentBasedDeduplication="true")
    name = url.rsplit("/", 1)[1]
    for group, body in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
    conn = amqp(broker)
    try:
        ch = conn.channel()
        # basic.get takes a1, then skips a2 (its group is held) for b1, then has nothing.
        a1, _, body = ch.basic_get(name, auto_ack=False)
        assert body == b"a1"
        b1, _, body = ch.basic_get(name, auto_ack=False)
        assert body == b"b1"
        assert ch.basic_get(name, auto_ack=False) == (None, None, None)
        # SQS receivers see the same hold.
        assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        ch.basic_ack(a1.delivery_tag)
        # A consumer with room for ten gets only a2: b2 waits for b1.
        ch.basic_qos(prefetch_count=10)
        got = []
        ch.basic_consume(name, lambda c, m, p, b: got.append((m.delivery_tag, b)))
        while not got:
            conn.process_data_events(time_limit=1)
        assert [b for _, b in got] == [b"a2"]
        # Acking b1 releases b2 to the consumer.
        ch.basic_ack(b1.delivery_tag)
        while len(got) < 2:
            conn.process_data_events(time_limit=1)
        assert [b for _, b in got] == [b"a2", b"b2"]
    finally:
        conn.close()


# -- message move tasks, permissions ----------------------------------------------------------


def dead_letter_pair(sqs, qname, max_receive=1):
    dlq = sqs.create_queue(QueueName=f"{qname}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    src = sqs.create_queue(QueueName=qname, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)})})["QueueUrl"]
    return src, dlq, dlq_arn


def test_message_move_task_redrives_back_to_the_source(sqs, qname):
    src, dlq, dlq_arn = dead_letter_pair(sqs, qname)
    for i in range(3):
        sqs.send_message(QueueUrl=src, MessageBody=f"m{i}")
    assert len(sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]) == 3
    assert "Messages" not in sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10)
    deadline = time.monotonic() + 5
    while sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"]["ApproximateNumberOfMessages"] != "3":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    handle = sqs.start_message_move_task(SourceArn=dlq_arn)["TaskHandle"]
    deadline = time.monotonic() + 10
    while True:
        (task,) = sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
        if task["Status"] != "RUNNING":
            break
        assert task["TaskHandle"] == handle
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert task["Status"] == "COMPLETED"
    assert task["ApproximateNumberOfMessagesMoved"] == 3
    assert "TaskHandle" not in task
    back = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in back) == ["m0", "m1", "m2"]
    with pytest.raises(ClientError) as e:
        sqs.cancel_message_move_task(TaskHandle=handle)
    assert code(e) == "ResourceNotFoundException"


def test_message_move_task_to_a_destination_and_cancel(sqs, qname):
    src, dlq, dlq_arn = dead_letter_pair(sqs, qname)
    dest = sqs.create_queue(QueueName=f"{qname}-dest")["QueueUrl"]
    dest_arn = sqs.get_queue_attributes(QueueUrl=dest, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.send_message_batch(QueueUrl=dlq, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(6)])
    handle = sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=dest_arn,
                                         MaxNumberOfMessagesPerSecond=2)["TaskHandle"]
    with pytest.raises(ClientError) as e:
        sqs.start_message_move_task(SourceArn=dlq_arn)
    assert code(e) == "AWS.SimpleQueueService.UnsupportedOperation"
    time.sleep(0.8)
    moved = sqs.cancel_message_move_task(TaskHandle=handle)["ApproximateNumberOfMessagesMoved"]
    assert 1 <= moved < 6
    deadline = time.monotonic() + 5
    while sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"][0]["Status"] != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    total = lambda url: int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
        "ApproximateNumberOfMessages"])
    assert total(dest) >= 1
    assert total(dest) + total(dlq) == 6
    with pytest.raises(ClientError) as e:
        sqs.start_message_move_task(SourceArn=dest_arn)
    assert code(e) == "InvalidParameterValue"  # not a dead-letter queue
    with pytest.raises(ClientError) as e:
        sqs.start_message_move_task(SourceArn=dlq_arn + "-nope")
    assert code(e) == "ResourceNotFoundException"


def test_add_and_remove_permission(sqs, qname):
    url = sqs.create_queue(QueueName=qname)["QueueUrl"]
    sqs.add_permission(QueueUrl=url, Label="AliceSend", AWSAccountIds=["111122223333"], Actions=["SendMessage"])
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    (st,) = policy["Statement"]
    assert st["Sid"] == "AliceSend" and st["Action"] == ["SQS:SendMessage"]
    assert st["Principal"] == {"AWS": ["arn:aws:iam::111122223333:root"]}
    with pytest.raises(ClientError) as e:
        sqs.add_permission(QueueUrl=url, Label="AliceSend", AWSAccountIds=["1"], Actions=["SendMessage"])
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.add_permission(QueueUrl=url, Label="Bad", AWSAccountIds=["1"], Actions=["Frobnicate"])
    assert code(e) == "InvalidParameterValue"
    sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert "Attributes" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    with pytest.raises(ClientError) as e:
        sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert code(e) == "InvalidParameterValue"


def test_sts_get_caller_identity(broker, tmp_path):
    sts = boto3.client("sts", endpoint_url=f"http://127.0.0.1:{broker.http_port}", region_name=REGION,
                       aws_access_key_id="guest", aws_secret_access_key="guest")
    who = sts.get_caller_identity()
    assert who["Account"] == ACCOUNT
    assert who["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/guest"
    assert who["UserId"] == "guest"
    bad = boto3.client("sts", endpoint_url=f"http://127.0.0.1:{broker.http_port}", region_name=REGION,
                       aws_access_key_id="guest", aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as e:
        bad.get_caller_identity()
    assert code(e) == "SignatureDoesNotMatch"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="guest", AWS_SECRET_ACCESS_KEY="guest",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    out = subprocess.run([sys.executable, "-m", "awscli", "sts", "get-caller-identity", "--endpoint-url",
                          f"http://127.0.0.1:{broker.http_port}", "--output", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Account"] == ACCOUNT
