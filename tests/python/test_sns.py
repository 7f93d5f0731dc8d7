"""Amazon SNS against a real wharf: boto3 and the aws command line for every operation and
error, SQS subscribers receiving envelopes and raw messages, FIFO topics, durability across
SIGKILL, and the topic as an engine exchange shared with AMQP (pika) and MQTT (paho-mqtt)."""

import json
import os
import queue
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET

import boto3
import paho.mqtt.client as mqtt
import pika
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import EXTERNAL_URL, WharfProcess

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="SNS tests need a wharf of their own")

ACCOUNT = "000000000000"
REGION = "us-east-1"
VHOST = f"aws:{ACCOUNT}:{REGION}"
SNS_NS = "http://sns.amazonaws.com/doc/2010-03-31/"
WAIT = 10


def client(broker, service, key="guest", secret="guest"):
    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{broker.http_port}",
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture(scope="module")
def sns(broker):
    return client(broker, "sns")


@pytest.fixture(scope="module")
def sqs(broker):
    return client(broker, "sqs")


@pytest.fixture
def tname():
    return f"t-{uuid.uuid4().hex[:12]}"


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def status(excinfo):
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def arn_of(name):
    return f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"


def new_queue(sqs, name=None, fifo=False):
    name = name or f"q-{uuid.uuid4().hex[:12]}"
    attrs = {}
    if fifo:
        name += ".fifo"
        attrs = {"FifoQueue": "true"}
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, qarn


def receive(sqs, url, n=1, wait=5):
    """Up to `n` messages (deleted once read), waiting at most `wait` s for each batch."""
    got = []
    while len(got) < n:
        r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"])
        msgs = r.get("Messages", [])
        if not msgs:
            break
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        got += msgs
    return got


# -- topics -----------------------------------------------------------------------------------


def test_create_list_get_delete_topic(sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    assert arn == arn_of(tname)
    assert {"TopicArn": arn} in sns.list_topics()["Topics"]
    attrs = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attrs["TopicArn"] == arn
    assert attrs["Owner"] == ACCOUNT
    assert attrs["SubscriptionsConfirmed"] == "0"
    assert json.loads(attrs["Policy"])["Statement"][0]["Resource"] == arn
    assert "FifoTopic" not in attrs
    sns.delete_topic(TopicArn=arn)
    assert {"TopicArn": arn} not in sns.list_topics()["Topics"]
    with pytest.raises(ClientError) as e:
        sns.get_topic_attributes(TopicArn=arn)
    assert code(e) == "NotFound" and status(e) == 404
    # Deleting what does not exist succeeds, as on AWS.
    sns.delete_topic(TopicArn=arn)


def test_create_topic_is_idempotent_and_conflicts(sns, tname):
    a = sns.create_topic(Name=tname, Attributes={"DisplayName": "d"}, Tags=[{"Key": "k", "Value": "v"}])
    b = sns.create_topic(Name=tname, Attributes={"DisplayName": "d"})
    assert a["TopicArn"] == b["TopicArn"]
    with pytest.raises(ClientError) as e:
        sns.create_topic(Name=tname, Attributes={"DisplayName": "other"})
    assert code(e) == "InvalidParameter" and status(e) == 400
    with pytest.raises(ClientError) as e:
        sns.create_topic(Name=tname, Tags=[{"Key": "k", "Value": "other"}])
    assert code(e) == "InvalidParameter"


@pytest.mark.parametrize("name,attrs", [
    ("has space", {}),
    ("x" * 257, {}),
    ("plain", {"FifoTopic": "true"}),
    ("named.fifo", {}),
    ("ok-name", {"Colour": "red"}),
    ("ok-name2", {"ContentBasedDeduplication": "true"}),
    ("ok-name3", {"SignatureVersion": "3"}),
    ("ok-name4", {"Policy": "not json"}),
])
def test_create_topic_bad_names_and_attributes(sns, name, attrs):
    with pytest.raises(ClientError) as e:
        sns.create_topic(Name=name, Attributes=attrs)
    assert code(e) == "InvalidParameter" and status(e) == 400


def test_list_topics_pages_of_100(sns):
    prefix = f"page-{uuid.uuid4().hex[:8]}-"
    mine = {sns.create_topic(Name=f"{prefix}{i:03}")["TopicArn"] for i in range(105)}
    seen, token, pages = [], None, 0
    while True:
        r = sns.list_topics(NextToken=token) if token else sns.list_topics()
        assert len(r["Topics"]) <= 100
        seen += [t["TopicArn"] for t in r["Topics"]]
        pages += 1
        token = r.get("NextToken")
        if not token:
            break
    assert pages >= 2
    assert mine <= set(seen)
    assert len(seen) == len(set(seen))
    with pytest.raises(ClientError) as e:
        sns.list_topics(NextToken="!!not-a-token!!")
    assert code(e) == "InvalidParameter"


def test_topic_attributes_set_and_errors(sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    sns.set_topic_attributes(TopicArn=arn, AttributeName="DisplayName", AttributeValue="Orders")
    policy = json.dumps({"Version": "2012-10-17", "Statement": []})
    sns.set_topic_attributes(TopicArn=arn, AttributeName="Policy", AttributeValue=policy)
    sns.set_topic_attributes(TopicArn=arn, AttributeName="SQSSuccessFeedbackSampleRate", AttributeValue="50")
    attrs = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attrs["DisplayName"] == "Orders"
    assert json.loads(attrs["Policy"]) == json.loads(policy)
    assert attrs["SQSSuccessFeedbackSampleRate"] == "50"
    for name, value in [("Nope", "x"), ("FifoTopic", "true"), ("TracingConfig", "Sometimes"),
                        ("SQSSuccessFeedbackSampleRate", "101"), ("DeliveryPolicy", "[1]")]:
        with pytest.raises(ClientError) as e:
            sns.set_topic_attributes(TopicArn=arn, AttributeName=name, AttributeValue=value)
        assert code(e) == "InvalidParameter", name


@pytest.mark.parametrize("arn,expected,http", [
    ("not-an-arn", "InvalidParameter", 400),
    ("arn:aws:sqs:us-east-1:000000000000:q", "InvalidParameter", 400),
    ("arn:aws:sns:us-east-1:000000000000:bad name", "InvalidParameter", 400),
    (arn_of("never-created"), "NotFound", 404),
    ("arn:aws:sns:us-east-1:111111111111:other-account", "NotFound", 404),
])
def test_invalid_and_unknown_topic_arns(sns, arn, expected, http):
    for call in (lambda: sns.get_topic_attributes(TopicArn=arn),
                 lambda: sns.publish(TopicArn=arn, Message="x"),
                 lambda: sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint="arn:aws:sqs:us-east-1:000000000000:q"),
                 lambda: sns.list_subscriptions_by_topic(TopicArn=arn)):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == expected and status(e) == http


# -- subscriptions and delivery to SQS --------------------------------------------------------


def test_publish_reaches_sqs_subscriber_as_envelope(broker, sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    assert sub.startswith(arn + ":")
    sent = sns.publish(TopicArn=arn, Message="hello subscribers", Subject="greeting", MessageAttributes={
        "colour": {"DataType": "String", "StringValue": "red"},
        "count": {"DataType": "Number", "StringValue": "3"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    })
    (m,) = receive(sqs, url)
    env = json.loads(m["Body"])
    assert env["Type"] == "Notification"
    assert env["MessageId"] == sent["MessageId"]
    assert env["TopicArn"] == arn
    assert env["Subject"] == "greeting"
    assert env["Message"] == "hello subscribers"
    assert env["Timestamp"].endswith("Z") and "T" in env["Timestamp"]
    assert env["SignatureVersion"] == "1"
    # Named as AWS names its certificates, after the certificate's digest.
    assert re.fullmatch(rf"http://127\.0\.0\.1:{broker.http_port}/SimpleNotificationService-[0-9a-f]+\.pem",
                        env["SigningCertURL"])
    verify_signature(env)
    assert env["UnsubscribeURL"] == (f"http://127.0.0.1:{broker.http_port}/?Action=Unsubscribe"
                                     f"&SubscriptionArn={sub.replace(':', '%3A')}")
    assert env["MessageAttributes"] == {
        "colour": {"Type": "String", "Value": "red"},
        "count": {"Type": "Number", "Value": "3"},
        "blob": {"Type": "Binary", "Value": "AAE="},
    }
    # The attributes travel in the envelope, not as SQS attributes; the SQS id is its own.
    assert "MessageAttributes" not in m
    assert m["MessageId"] != sent["MessageId"]
    assert list(env)[:5] == ["Type", "MessageId", "TopicArn", "Subject", "Message"]


def string_to_sign(env):
    """AWS's documented order for a Notification: Message, MessageId, Subject (if any),
    Timestamp, TopicArn, Type, each as `Name\nvalue\n`."""
    keys = ["Message", "MessageId"] + (["Subject"] if "Subject" in env else []) + ["Timestamp", "TopicArn", "Type"]
    return "".join(f"{k}\n{env[k]}\n" for k in keys).encode()


def verify_signature(env):
    """Checks an envelope as a subscriber does: fetch SigningCertURL, verify with its key."""
    import base64
    import urllib.request
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    with urllib.request.urlopen(env["SigningCertURL"], timeout=10) as r:
        cert = x509.load_pem_x509_certificate(r.read())
    digest = hashes.SHA1() if env["SignatureVersion"] == "1" else hashes.SHA256()
    # Raises InvalidSignature when it does not verify.
    cert.public_key().verify(base64.b64decode(env["Signature"]), string_to_sign(env), padding.PKCS1v15(), digest)


def test_signature_version_2_and_tampering(sns, sqs, tname):
    from cryptography.exceptions import InvalidSignature

    arn = sns.create_topic(Name=tname, Attributes={"SignatureVersion": "2"})["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    sns.publish(TopicArn=arn, Message="signed with sha256")
    env = json.loads(receive(sqs, url)[0]["Body"])
    assert env["SignatureVersion"] == "2"
    verify_signature(env)
    env["Message"] = "tampered"
    with pytest.raises(InvalidSignature):
        verify_signature(env)


def test_unsubscribe_url_works_without_a_signature(broker, sns, sqs, tname):
    import urllib.error
    import urllib.request

    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    sns.publish(TopicArn=arn, Message="x")
    link = json.loads(receive(sqs, url)[0]["Body"])["UnsubscribeURL"]
    with urllib.request.urlopen(link, timeout=10) as r:
        assert r.status == 200
        assert ET.fromstring(r.read()).tag == f"{{{SNS_NS}}}UnsubscribeResponse"
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []
    # Once gone, the link answers NotFound; it opens no other door (other actions stay signed).
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(link, timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(link.replace("Action=Unsubscribe", "Action=DeleteTopic")
                               .replace("SubscriptionArn", "TopicArn"), timeout=10)
    assert e.value.code == 403
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["TopicArn"] == arn


def test_every_subscriber_gets_one_copy(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    queues = [new_queue(sqs) for _ in range(3)]
    for _, qarn in queues:
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    ids = {sns.publish(TopicArn=arn, Message=f"m{i}")["MessageId"] for i in range(4)}
    for url, _ in queues:
        got = receive(sqs, url, n=4)
        assert {json.loads(m["Body"])["MessageId"] for m in got} == ids
        assert receive(sqs, url, wait=0) == []


def test_raw_message_delivery_maps_attributes(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                        Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]
    assert sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]["RawMessageDelivery"] == "true"
    attrs = {"colour": {"DataType": "String", "StringValue": "blue"},
             "n": {"DataType": "Number", "StringValue": "7"},
             "b": {"DataType": "Binary", "BinaryValue": b"\xff"}}
    sns.publish(TopicArn=arn, Message="raw body", Subject="ignored in raw", MessageAttributes=attrs)
    (m,) = receive(sqs, url)
    assert m["Body"] == "raw body"
    assert m["MessageAttributes"] == attrs
    # Back to envelopes.
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="RawMessageDelivery",
                                    AttributeValue="false")
    sns.publish(TopicArn=arn, Message="wrapped")
    (m,) = receive(sqs, url)
    assert json.loads(m["Body"])["Message"] == "wrapped"


def test_message_structure_json_picks_the_sqs_entry(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    sns.publish(TopicArn=arn, MessageStructure="json",
                Message=json.dumps({"default": "for everyone", "sqs": "for sqs"}))
    sns.publish(TopicArn=arn, MessageStructure="json", Message=json.dumps({"default": "only default"}))
    got = [json.loads(m["Body"])["Message"] for m in receive(sqs, url, n=2)]
    assert sorted(got) == ["for sqs", "only default"]
    with pytest.raises(ClientError) as e:
        sns.publish(TopicArn=arn, MessageStructure="json", Message=json.dumps({"sqs": "x"}))
    assert code(e) == "InvalidParameter"
    assert "No default entry" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        sns.publish(TopicArn=arn, MessageStructure="json", Message="{not json")
    assert code(e) == "InvalidParameter"


def test_subscription_lifecycle(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, ReturnSubscriptionArn=True)["SubscriptionArn"]
    # Subscribing the same endpoint again is the same subscription.
    assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"] == sub
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    assert code(e) == "InvalidParameter"
    expected = {"SubscriptionArn": sub, "Owner": ACCOUNT, "Protocol": "sqs", "Endpoint": qarn, "TopicArn": arn}
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == [expected]
    assert expected in sns.list_subscriptions()["Subscriptions"]
    attrs = sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    assert attrs["TopicArn"] == arn and attrs["Endpoint"] == qarn and attrs["PendingConfirmation"] == "false"
    assert attrs["RawMessageDelivery"] == "false"
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["SubscriptionsConfirmed"] == "1"
    dlq_url, dlq_arn = new_queue(sqs)
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn})
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="RedrivePolicy", AttributeValue=redrive)
    delivery = json.dumps({"healthyRetryPolicy": {"numRetries": 5}})
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="DeliveryPolicy", AttributeValue=delivery)
    attrs = sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    assert attrs["RedrivePolicy"] == redrive and attrs["DeliveryPolicy"] == delivery
    for name, value in [("Nope", "x"), ("RawMessageDelivery", "yes"), ("RedrivePolicy", "{}"),
                        ("DeliveryPolicy", "nope")]:
        with pytest.raises(ClientError) as e:
            sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName=name, AttributeValue=value)
        assert code(e) == "InvalidParameter", name
    # Still delivering after the attribute changes.
    sns.publish(TopicArn=arn, Message="still here")
    assert json.loads(receive(sqs, url)[0]["Body"])["Message"] == "still here"
    sns.unsubscribe(SubscriptionArn=sub)
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []
    sns.publish(TopicArn=arn, Message="nobody listens")
    assert receive(sqs, url, wait=1) == []
    with pytest.raises(ClientError) as e:
        sns.unsubscribe(SubscriptionArn=sub)
    assert code(e) == "NotFound"
    with pytest.raises(ClientError) as e:
        sns.get_subscription_attributes(SubscriptionArn="arn:aws:sns:us-east-1:000000000000:x")
    assert code(e) == "InvalidParameter"


def test_deleting_a_topic_removes_its_subscriptions(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    _, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    sns.delete_topic(TopicArn=arn)
    assert sub not in [s["SubscriptionArn"] for s in sns.list_subscriptions()["Subscriptions"]]
    with pytest.raises(ClientError) as e:
        sns.get_subscription_attributes(SubscriptionArn=sub)
    assert code(e) == "NotFound"


@pytest.mark.parametrize("protocol,endpoint,fragment", [
    # HTTP/S endpoints must be allowed by sns.http_allow (this machine by default).
    ("https", "https://example.com/hook", "sns.http_allow"),
    ("http", "ftp://example.com/", "http://"),
    ("email", "someone@example.com", "does not deliver"),
    ("sms", "+15555550100", "does not deliver"),
    ("lambda", "arn:aws:lambda:us-east-1:000000000000:function:f", "does not deliver"),
    ("application", "arn:aws:sns:us-east-1:000000000000:endpoint/APNS/app/x", "does not deliver"),
    ("firehose", "arn:aws:firehose:us-east-1:000000000000:deliverystream/d", "does not deliver"),
    ("carrier-pigeon", "x", "does not support"),
    ("sqs", "not-an-arn", "SQS endpoint"),
    ("sqs", "arn:aws:sqs:us-east-1:000000000000:no-such-queue", "does not exist"),
    # Another region (or account) may subscribe when its queue exists in this broker.
    ("sqs", "arn:aws:sqs:eu-west-1:000000000000:q", "does not exist"),
])
def test_subscribe_refusals(sns, tname, protocol, endpoint, fragment):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=arn, Protocol=protocol, Endpoint=endpoint)
    assert code(e) == "InvalidParameter" and status(e) == 400
    assert fragment in e.value.response["Error"]["Message"]
    # Nothing was accepted and dropped.
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []


def test_filter_policy_on_message_attributes(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    policy = {"colour": ["red", {"prefix": "bl"}], "price": [{"numeric": [">=", 10, "<", 100]}]}
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                        Attributes={"FilterPolicy": json.dumps(policy), "RawMessageDelivery": "true"})["SubscriptionArn"]
    attrs = sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    assert json.loads(attrs["FilterPolicy"]) == policy and attrs["FilterPolicyScope"] == "MessageAttributes"

    def pub(body, colour, price):
        sns.publish(TopicArn=arn, Message=body, MessageAttributes={
            "colour": {"DataType": "String", "StringValue": colour},
            "price": {"DataType": "Number", "StringValue": str(price)}})

    pub("red-50", "red", 50)
    pub("blue-10", "blue", 10)
    pub("green-50", "green", 50)
    pub("red-100", "red", 100)
    sns.publish(TopicArn=arn, Message="no attributes")
    assert sorted(m["Body"] for m in receive(sqs, url, n=4, wait=2)) == ["blue-10", "red-50"]
    # A new policy applies to the next publish; an empty one removes the filter.
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="FilterPolicy",
                                    AttributeValue=json.dumps({"colour": [{"anything-but": "red"}]}))
    pub("red-1", "red", 1)
    pub("green-1", "green", 1)
    assert [m["Body"] for m in receive(sqs, url, n=2, wait=2)] == ["green-1"]
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="FilterPolicy", AttributeValue="")
    assert "FilterPolicy" not in sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    sns.publish(TopicArn=arn, Message="everything again")
    assert [m["Body"] for m in receive(sqs, url)] == ["everything again"]


def test_filter_policy_on_the_message_body(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    policy = {"order": {"kind": ["retail"], "total": [{"numeric": [">", 100]}]}}
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={
        "FilterPolicy": json.dumps(policy), "FilterPolicyScope": "MessageBody"})
    for kind, total in [("retail", 150), ("retail", 50), ("wholesale", 500)]:
        sns.publish(TopicArn=arn, Message=json.dumps({"order": {"kind": kind, "total": total}}))
    sns.publish(TopicArn=arn, Message="not json")
    got = [json.loads(json.loads(m["Body"])["Message"]) for m in receive(sqs, url, n=3, wait=2)]
    assert got == [{"order": {"kind": "retail", "total": 150}}]


@pytest.mark.parametrize("attributes,fragment", [
    ({"FilterPolicy": "not json"}, "FilterPolicy"),
    ({"FilterPolicy": json.dumps({"a": [1], "b": [1], "c": [1], "d": [1], "e": [1], "f": [1]})}, "FilterPolicy"),
    ({"FilterPolicy": json.dumps({"a": {"nested": ["x"]}})}, "nested"),
    ({"FilterPolicy": json.dumps({"a": ["x"]}), "FilterPolicyScope": "Elsewhere"}, "FilterPolicyScope"),
    ({"FilterPolicy": json.dumps({"a": [{"numeric": [">", "x"]}]})}, "FilterPolicy"),
])
def test_bad_filter_policies_are_refused(sns, sqs, tname, attributes, fragment):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    _, qarn = new_queue(sqs)
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes=attributes)
    assert code(e) == "InvalidParameter" and status(e) == 400
    assert fragment in e.value.response["Error"]["Message"]
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    # The bad attribute alone is refused by SetSubscriptionAttributes too.
    name = "FilterPolicyScope" if "FilterPolicyScope" in attributes else "FilterPolicy"
    with pytest.raises(ClientError) as e:
        sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName=name, AttributeValue=attributes[name])
    assert code(e) == "InvalidParameter"
    assert "FilterPolicy" not in sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]


def test_confirm_subscription_with_an_unknown_token(sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    with pytest.raises(ClientError) as e:
        sns.confirm_subscription(TopicArn=arn, Token="0123456789abcdef")
    assert code(e) == "InvalidParameter"
    with pytest.raises(ClientError) as e:
        sns.confirm_subscription(TopicArn=arn_of("no-such-topic"), Token="x")
    assert code(e) == "NotFound"


# -- publish errors and batches ---------------------------------------------------------------


def test_publish_validation(sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    assert "MessageId" in sns.publish(TopicArn=arn, Message="x" * 262144)
    cases = [
        (dict(Message="x" * 262145), "InvalidParameter", "Message too long"),
        (dict(Message="x" * 262000, MessageAttributes={"a": {"DataType": "String", "StringValue": "y" * 200}}),
         "InvalidParameter", "Message too long"),
        (dict(Message=""), "InvalidParameter", "Empty message"),
        (dict(Message="x", Subject="two\nlines"), "InvalidParameter", "Subject"),
        (dict(Message="x", Subject="s" * 101), "InvalidParameter", "Subject"),
        (dict(Message="x", MessageStructure="xml"), "InvalidParameter", "MessageStructure"),
        (dict(Message="x", MessageAttributes={"n": {"DataType": "Number", "StringValue": "abc"}}),
         "ParameterValueInvalid", "number"),
        (dict(Message="x", MessageAttributes={"t": {"DataType": "Colour", "StringValue": "red"}}),
         "ParameterValueInvalid", "type"),
        (dict(Message="x", MessageAttributes={f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)}),
         "ParameterValueInvalid", "maximum"),
        (dict(Message="x", MessageAttributes={"AWS.reserved": {"DataType": "String", "StringValue": "v"}}),
         "ParameterValueInvalid", "invalid"),
        (dict(Message="x", MessageGroupId="g"), "InvalidParameter", "MessageGroupId"),
        (dict(Message="x", MessageDeduplicationId="d"), "InvalidParameter", "MessageDeduplicationId"),
    ]
    for kwargs, expected, fragment in cases:
        with pytest.raises(ClientError) as e:
            sns.publish(TopicArn=arn, **kwargs)
        assert code(e) == expected and status(e) == 400, kwargs.keys()
        assert fragment in e.value.response["Error"]["Message"], e.value.response["Error"]["Message"]


def test_publish_batch(sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    r = sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=[
        {"Id": "a", "Message": "first", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
        {"Id": "b", "Message": ""},
        {"Id": "c", "Message": "third", "Subject": "s"},
    ])
    assert sorted(s["Id"] for s in r["Successful"]) == ["a", "c"]
    assert all(s["MessageId"] for s in r["Successful"])
    (failed,) = r["Failed"]
    assert failed["Id"] == "b" and failed["Code"] == "InvalidParameter" and failed["SenderFault"] is True
    got = receive(sqs, url, n=2)
    assert sorted(m["Body"] for m in got) == ["first", "third"]


@pytest.mark.parametrize("entries,expected", [
    ([], "EmptyBatchRequest"),
    ([{"Id": str(i), "Message": "m"} for i in range(11)], "TooManyEntriesInBatchRequest"),
    ([{"Id": "x", "Message": "m"}, {"Id": "x", "Message": "n"}], "BatchEntryIdsNotDistinct"),
    ([{"Id": "bad id", "Message": "m"}], "InvalidBatchEntryId"),
    ([{"Id": "a", "Message": "x" * 200000}, {"Id": "b", "Message": "x" * 100000}], "BatchRequestTooLong"),
])
def test_publish_batch_request_errors(sns, tname, entries, expected):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    with pytest.raises(ClientError) as e:
        sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)
    assert code(e) == expected and status(e) == 400


# -- tags, permissions ------------------------------------------------------------------------


def test_tags(sns, tname):
    arn = sns.create_topic(Name=tname, Tags=[{"Key": "team", "Value": "core"}])["TopicArn"]
    sns.tag_resource(ResourceArn=arn, Tags=[{"Key": "env", "Value": "test"}])
    tags = {t["Key"]: t["Value"] for t in sns.list_tags_for_resource(ResourceArn=arn)["Tags"]}
    assert tags == {"team": "core", "env": "test"}
    sns.untag_resource(ResourceArn=arn, TagKeys=["team"])
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "env", "Value": "test"}]
    with pytest.raises(ClientError) as e:
        sns.tag_resource(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert code(e) == "TagLimitExceeded"
    with pytest.raises(ClientError) as e:
        sns.list_tags_for_resource(ResourceArn=arn_of("missing-topic"))
    assert code(e) == "ResourceNotFound" and status(e) == 404
    with pytest.raises(ClientError) as e:
        sns.tag_resource(ResourceArn="garbage", Tags=[{"Key": "a", "Value": "b"}])
    assert code(e) == "InvalidParameter"


def test_add_and_remove_permission(sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    sns.add_permission(TopicArn=arn, Label="share", AWSAccountId=["111122223333"], ActionName=["Publish"])
    policy = json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"])
    st = [s for s in policy["Statement"] if s["Sid"] == "share"][0]
    assert st["Principal"] == {"AWS": ["arn:aws:iam::111122223333:root"]}
    assert st["Action"] == ["SNS:Publish"] and st["Resource"] == arn
    with pytest.raises(ClientError) as e:
        sns.add_permission(TopicArn=arn, Label="share", AWSAccountId=["111122223333"], ActionName=["Publish"])
    assert code(e) == "InvalidParameter"
    with pytest.raises(ClientError) as e:
        sns.add_permission(TopicArn=arn, Label="x", AWSAccountId=["111122223333"], ActionName=["Fly"])
    assert code(e) == "InvalidParameter"
    sns.remove_permission(TopicArn=arn, Label="share")
    policy = json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"])
    assert all(s["Sid"] != "share" for s in policy["Statement"])
    with pytest.raises(ClientError) as e:
        sns.remove_permission(TopicArn=arn, Label="share")
    assert code(e) == "InvalidParameter"


# -- FIFO topics ------------------------------------------------------------------------------


def test_fifo_topic_group_order_and_deduplication(sns, sqs, tname):
    arn = sns.create_topic(Name=f"{tname}.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    attrs = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attrs["FifoTopic"] == "true" and attrs["ContentBasedDeduplication"] == "false"
    url, qarn = new_queue(sqs, fifo=True)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    seqs = []
    for i in range(5):
        for g in ("a", "b"):
            r = sns.publish(TopicArn=arn, Message=f"{g}{i}", MessageGroupId=g, MessageDeduplicationId=f"{g}-{i}")
            seqs.append(int(r["SequenceNumber"]))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    again = sns.publish(TopicArn=arn, Message="a0 again", MessageGroupId="a", MessageDeduplicationId="a-0")
    first_ids = receive(sqs, url, n=10)
    by_group = {}
    for m in first_ids:
        by_group.setdefault(m["Attributes"]["MessageGroupId"], []).append(m["Body"])
    assert by_group == {"a": [f"a{i}" for i in range(5)], "b": [f"b{i}" for i in range(5)]}
    assert "a0 again" not in [m["Body"] for m in first_ids]
    assert again["SequenceNumber"] == str(seqs[0]).zfill(20)
    with pytest.raises(ClientError) as e:
        sns.publish(TopicArn=arn, Message="x", MessageDeduplicationId="d")
    assert code(e) == "InvalidParameter" and "MessageGroupId" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        sns.publish(TopicArn=arn, Message="x", MessageGroupId="g")
    assert code(e) == "InvalidParameter" and "ContentBasedDeduplication" in e.value.response["Error"]["Message"]


def test_fifo_topic_content_based_deduplication(sns, sqs, tname):
    arn = sns.create_topic(Name=f"{tname}.fifo", Attributes={
        "FifoTopic": "true", "ContentBasedDeduplication": "true"})["TopicArn"]
    url, qarn = new_queue(sqs, fifo=True)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    a = sns.publish(TopicArn=arn, Message="same", MessageGroupId="g")
    b = sns.publish(TopicArn=arn, Message="same", MessageGroupId="g")
    c = sns.publish(TopicArn=arn, Message="different", MessageGroupId="g")
    assert a["MessageId"] == b["MessageId"] and c["MessageId"] != a["MessageId"]
    got = receive(sqs, url, n=3, wait=2)
    envs = [json.loads(m["Body"]) for m in got]
    assert [e["Message"] for e in envs] == ["same", "different"]
    assert envs[0]["SequenceNumber"] == a["SequenceNumber"]


def test_only_fifo_queues_subscribe_to_fifo_topics(sns, sqs, tname):
    fifo = sns.create_topic(Name=f"{tname}.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    std = sns.create_topic(Name=tname)["TopicArn"]
    _, std_q = new_queue(sqs)
    _, fifo_q = new_queue(sqs, fifo=True)
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=fifo, Protocol="sqs", Endpoint=std_q)
    assert code(e) == "InvalidParameter"
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=std, Protocol="sqs", Endpoint=fifo_q)
    assert code(e) == "InvalidParameter"


# -- protocol surface -------------------------------------------------------------------------


def signed_post(broker, body, service="sns"):
    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{broker.http_port}/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials("guest", "guest"), service, REGION).add_auth(req)
    import urllib.request
    r = urllib.request.Request(req.url, data=body.encode(), headers=dict(req.headers), method="POST")
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_query_xml_shapes_and_errors(broker, sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    st, body = signed_post(broker, f"Action=GetTopicAttributes&Version=2010-03-31&TopicArn={arn}")
    assert st == 200
    doc = ET.fromstring(body)
    assert doc.tag == f"{{{SNS_NS}}}GetTopicAttributesResponse"
    entries = doc.findall(f".//{{{SNS_NS}}}Attributes/{{{SNS_NS}}}entry")
    assert {e.find(f"{{{SNS_NS}}}key").text for e in entries} >= {"TopicArn", "Owner", "Policy"}
    st, body = signed_post(broker, "Action=Frobnicate&Version=2010-03-31")
    assert st == 400
    doc = ET.fromstring(body)
    assert doc.tag == f"{{{SNS_NS}}}ErrorResponse"
    assert doc.find(f".//{{{SNS_NS}}}Code").text == "InvalidAction"
    st, body = signed_post(broker, "Action=Publish&Version=2010-03-31&Message=x&TopicArn=" + arn_of("nope"))
    assert st == 404 and "<Code>NotFound</Code>" in body


def test_signature_errors_use_the_sns_shape(broker, tname):
    bad = client(broker, "sns", secret="wrong")
    with pytest.raises(ClientError) as e:
        bad.list_topics()
    assert code(e) == "SignatureDoesNotMatch" and status(e) == 403
    unknown = client(broker, "sns", key="AKIDUNKNOWN")
    with pytest.raises(ClientError) as e:
        unknown.list_topics()
    assert code(e) == "InvalidClientTokenId"


def test_aws_cli(broker, sqs, tname, tmp_path):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="guest", AWS_SECRET_ACCESS_KEY="guest",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    aws = [sys.executable, "-m", "awscli", "sns", "--endpoint-url", f"http://127.0.0.1:{broker.http_port}",
           "--output", "json"]

    def run(*args):
        out = subprocess.run(aws + list(args), env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    arn = run("create-topic", "--name", tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sub = run("subscribe", "--topic-arn", arn, "--protocol", "sqs", "--notification-endpoint", qarn)["SubscriptionArn"]
    assert run("list-subscriptions-by-topic", "--topic-arn", arn)["Subscriptions"][0]["SubscriptionArn"] == sub
    mid = run("publish", "--topic-arn", arn, "--message", "from the cli")["MessageId"]
    env_ = json.loads(receive(sqs, url)[0]["Body"])
    assert env_["MessageId"] == mid and env_["Message"] == "from the cli"
    run("unsubscribe", "--subscription-arn", sub)
    run("delete-topic", "--topic-arn", arn)
    bad = subprocess.run(aws + ["get-topic-attributes", "--topic-arn", arn], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "NotFound" in bad.stderr


# -- durability -------------------------------------------------------------------------------


@pytest.mark.restart
def test_topics_subscriptions_and_published_messages_survive_sigkill(own_broker):
    sns, sqs = client(own_broker, "sns"), client(own_broker, "sqs")
    arn = sns.create_topic(Name="durable", Attributes={"DisplayName": "kept"},
                           Tags=[{"Key": "k", "Value": "v"}])["TopicArn"]
    url, qarn = new_queue(sqs, name="durable-q")
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                        Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]
    farn = sns.create_topic(Name="durable.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    furl, fqarn = new_queue(sqs, name="durable-f", fifo=True)
    sns.subscribe(TopicArn=farn, Protocol="sqs", Endpoint=fqarn)
    for i in range(20):
        sns.publish(TopicArn=arn, Message=f"m{i}")
    sns.publish(TopicArn=farn, Message="once", MessageGroupId="g", MessageDeduplicationId="d1")
    own_broker.restart(kill=True)
    sns, sqs = client(own_broker, "sns"), client(own_broker, "sqs")
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["DisplayName"] == "kept"
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
    assert [s["SubscriptionArn"] for s in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]] == [sub]
    assert sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]["RawMessageDelivery"] == "true"
    # Every Publish that got its 200 is in the subscriber's queue.
    assert sorted(m["Body"] for m in receive(sqs, url, n=20)) == sorted(f"m{i}" for i in range(20))
    # Delivery goes on after the restart, and the FIFO deduplication window survived it.
    sns.publish(TopicArn=arn, Message="after")
    assert receive(sqs, url)[0]["Body"] == "after"
    sns.publish(TopicArn=farn, Message="twice?", MessageGroupId="g", MessageDeduplicationId="d1")
    assert [json.loads(m["Body"])["Message"] for m in receive(sqs, furl, n=2, wait=2)] == ["once"]


# -- one engine: AMQP and MQTT on the topic's exchange ----------------------------------------


def amqp(broker):
    return pika.BlockingConnection(broker.params(virtual_host=VHOST))


def test_sns_publish_reaches_an_amqp_queue_bound_to_the_topic(broker, sns, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    conn = amqp(broker)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, tname)
        wrapped = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(wrapped, tname, arguments={"x-sns-raw-message-delivery": "false"})
        sent = sns.publish(TopicArn=arn, Message="to amqp", Subject="s",
                           MessageAttributes={"colour": {"DataType": "String", "StringValue": "red"}})
        method, props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"to amqp"
        assert props.message_id == sent["MessageId"]
        assert props.headers["colour"] in ("red", b"red")
        assert not any(k.startswith("x-sns-") for k in props.headers)
        method, props, body = ch.basic_get(wrapped, auto_ack=True)
        env = json.loads(body)
        assert env["MessageId"] == sent["MessageId"] and env["Message"] == "to amqp" and env["Subject"] == "s"
        # A filter policy as a binding argument.
        reds = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(reds, tname, arguments={"x-sns-filter-policy": json.dumps({"colour": ["red"]})})
        sns.publish(TopicArn=arn, Message="blue one",
                    MessageAttributes={"colour": {"DataType": "String", "StringValue": "blue"}})
        sns.publish(TopicArn=arn, Message="red one",
                    MessageAttributes={"colour": {"DataType": "String", "StringValue": "red"}})
        assert ch.basic_get(reds, auto_ack=True)[2] == b"red one"
        assert ch.basic_get(reds, auto_ack=True)[0] is None
        # A bad binding argument is refused with the AMQP channel error.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_bind(q, tname, arguments={"x-sns-raw-message-delivery": "maybe"})
        assert e.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_bind(q, tname, arguments={"x-sns-filter-policy": "{not json"})
        assert e.value.reply_code == 406 and "FilterPolicy" in e.value.reply_text
    finally:
        conn.close()


def test_copies_expire_with_the_queue_retention(broker, sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"MessageRetentionPeriod": "120"})
    qname = qarn.rsplit(":", 1)[1]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    sns.publish(TopicArn=arn, Message="short-lived")
    conn = amqp(broker)
    try:
        method, props, body = conn.channel().basic_get(qname, auto_ack=True)
        assert json.loads(body)["Message"] == "short-lived"
        # The per-message TTL an SQS send to this queue gets (docs/mapping/sqs.md).
        assert props.expiration == "120000"
    finally:
        conn.close()


def test_amqp_publish_to_the_topic_reaches_sqs_subscribers(broker, sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    raw_url, raw_qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=raw_qarn, Attributes={"RawMessageDelivery": "true"})
    conn = amqp(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(tname, "", b"from amqp",
                         pika.BasicProperties(headers={"colour": "green", "n": 5}, delivery_mode=2))
    finally:
        conn.close()
    env = json.loads(receive(sqs, url)[0]["Body"])
    assert env["Type"] == "Notification" and env["TopicArn"] == arn and env["Message"] == "from amqp"
    assert env["MessageAttributes"]["colour"] == {"Type": "String", "Value": "green"}
    assert env["MessageAttributes"]["n"] == {"Type": "Number", "Value": "5"}
    uuid.UUID(env["MessageId"])
    (raw,) = receive(sqs, raw_url)
    assert raw["Body"] == "from amqp"
    assert raw["MessageAttributes"]["colour"] == {"DataType": "String", "StringValue": "green"}


def test_stomp_send_to_the_topic_exchange_reaches_sqs_subscribers(broker, sns, sqs, tname):
    from test_sqs import StompClient

    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
    s = StompClient(broker)
    try:
        s.send(f"/exchange/{tname}", "from stomp", colour="blue", persistent="true")
    finally:
        s.close()
    env = json.loads(receive(sqs, url)[0]["Body"])
    assert env["TopicArn"] == arn and env["Message"] == "from stomp"
    assert env["MessageAttributes"]["colour"] == {"Type": "String", "Value": "blue"}
    verify_signature(env)


@pytest.fixture
def aws_mqtt_broker(tmp_path):
    """A wharf whose MQTT listener serves the AWS account's vhost."""
    b = WharfProcess(tmp_path / "data", env={"WHARF_MQTT__VHOST": VHOST}).start()
    try:
        yield b
    finally:
        b.stop_quietly()


def mqtt_client(broker, msgs=None):
    m = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"sns-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    m.username_pw_set("guest", "guest")
    if msgs is not None:
        m.on_message = lambda c, u, msg: msgs.put(msg)
    m.connect(broker.host, broker.mqtt_port, 30)
    m.loop_start()
    return m


@pytest.mark.restart
def test_mqtt_both_ways_through_amq_topic(aws_mqtt_broker):
    b = aws_mqtt_broker
    sns, sqs = client(b, "sns"), client(b, "sqs")
    arn = sns.create_topic(Name="alerts")["TopicArn"]
    url, qarn = new_queue(sqs)
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    conn = amqp(b)
    try:
        ch = conn.channel()
        # SNS -> MQTT: the topic forwards to amq.topic with key sns.alerts (MQTT `sns/alerts`).
        ch.exchange_bind(destination="amq.topic", source="alerts", routing_key="sns.alerts")
        # MQTT -> SNS: MQTT publishes on `to-sns/alerts` reach the topic.
        ch.exchange_bind(destination="alerts", source="amq.topic", routing_key="to-sns.alerts")
        # An MQTT subscription with a filter policy: the exchange binding carries it.
        ch.exchange_bind(destination="amq.topic", source="alerts", routing_key="sns.alerts.red",
                         arguments={"x-sns-filter-policy": json.dumps({"colour": ["red"]})})
    finally:
        conn.close()
    msgs = queue.Queue()
    sub = mqtt_client(b, msgs)
    try:
        subscribed = queue.Queue()
        sub.on_subscribe = lambda *a: subscribed.put(True)
        sub.subscribe("sns/alerts", qos=1)
        subscribed.get(timeout=WAIT)
        sns.publish(TopicArn=arn, Message="sns to mqtt")
        got = msgs.get(timeout=WAIT)
        assert got.topic == "sns/alerts" and got.payload == b"sns to mqtt"
        assert receive(sqs, url)[0]["Body"] == "sns to mqtt"
        reds = queue.Queue()
        red_sub = mqtt_client(b, reds)
        try:
            red_subscribed = queue.Queue()
            red_sub.on_subscribe = lambda *a: red_subscribed.put(True)
            red_sub.subscribe("sns/alerts/red", qos=1)
            red_subscribed.get(timeout=WAIT)
            for colour in ("blue", "red"):
                sns.publish(TopicArn=arn, Message=f"{colour} alert", MessageAttributes={
                    "colour": {"DataType": "String", "StringValue": colour}})
            assert reds.get(timeout=WAIT).payload == b"red alert"
            with pytest.raises(queue.Empty):
                reds.get(timeout=1)
        finally:
            red_sub.loop_stop()
            red_sub.disconnect()
        assert sorted(m["Body"] for m in receive(sqs, url, n=2)) == ["blue alert", "red alert"]
        assert [msgs.get(timeout=WAIT).payload for _ in range(2)] == [b"blue alert", b"red alert"]
        pub = mqtt_client(b)
        try:
            pub.publish("to-sns/alerts", b"mqtt to sns", qos=1).wait_for_publish(WAIT)
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert receive(sqs, url)[0]["Body"] == "mqtt to sns"
        # Each exchange is visited once per publish: a message that came in through
        # amq.topic does not go back out to it (no loop), so `sns/alerts` hears nothing.
        with pytest.raises(queue.Empty):
            msgs.get(timeout=1)
    finally:
        sub.loop_stop()
        sub.disconnect()


# --- Subscriptions as AWS keeps them: same endpoint twice, deleted queues, forged bindings ---


def test_subscribing_a_queue_again_compares_only_the_attributes_given(sns, sqs, tname):
    # AWS: the same (topic, protocol, endpoint) answers the existing ARN when every attribute
    # given matches (absent ones count as their defaults), else InvalidParameter.
    arn = sns.create_topic(Name=tname)["TopicArn"]
    _, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                         Attributes={"RawMessageDelivery": "false"})["SubscriptionArn"] == sub
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    assert code(e) == "InvalidParameter"
    assert "Subscription already exists with different attributes" in e.value.response["Error"]["Message"]
    policy = json.dumps({"colour": ["red"]})
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="FilterPolicy", AttributeValue=policy)
    assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                         Attributes={"FilterPolicy": policy})["SubscriptionArn"] == sub
    assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"] == sub
    with pytest.raises(ClientError) as e:
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                      Attributes={"FilterPolicy": json.dumps({"colour": ["blue"]})})
    assert code(e) == "InvalidParameter"
    assert len(sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]) == 1


def test_deleting_the_queue_keeps_the_subscription_and_redrives_to_its_dead_letter_queue(broker, sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    url, qarn = new_queue(sqs)
    dlq_url, dlq_arn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, ReturnSubscriptionArn=True,
                        Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]
    sqs.delete_queue(QueueUrl=url)
    # As on AWS: the subscription stays, listed and readable.
    [s] = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    assert s["SubscriptionArn"] == sub and s["Endpoint"] == qarn
    assert sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]["Endpoint"] == qarn
    assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"] == sub
    # Without a RedrivePolicy the copy is dropped; with one it goes to the dead-letter queue.
    sns.publish(TopicArn=arn, Message="dropped")
    sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName="RedrivePolicy",
                                    AttributeValue=json.dumps({"deadLetterTargetArn": dlq_arn}))
    sns.publish(TopicArn=arn, Message="to the dlq",
                MessageAttributes={"colour": {"DataType": "String", "StringValue": "red"}})
    [m] = receive(sqs, dlq_url, n=2, wait=2)
    assert m["Body"] == "to the dlq"
    assert m["MessageAttributes"]["colour"]["StringValue"] == "red"
    # The copy expires with the dead-letter queue's retention, as a message sent to it does.
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": "60"})
    sns.publish(TopicArn=arn, Message="expires")
    conn = amqp(broker)
    try:
        got = conn.channel().basic_get(dlq_arn.split(":")[-1], auto_ack=True)
        assert got[2] == b"expires" and got[1].expiration == "60000"
    finally:
        conn.close()
    # A queue of that name again: deliveries resume (the subscription names the queue by ARN).
    # SQS refuses the name for 60 s after DeleteQueue, as AWS does; AMQP declares it at once.
    conn = amqp(broker)
    try:
        conn.channel().queue_declare(queue=qarn.split(":")[-1], durable=True)
    finally:
        conn.close()
    sns.publish(TopicArn=arn, Message="resumed")
    assert [m["Body"] for m in receive(sqs, url)] == ["resumed"]
    assert receive(sqs, dlq_url, wait=1) == []
    # Unsubscribe works whether or not the queue exists.
    sqs.delete_queue(QueueUrl=url)
    sns.unsubscribe(SubscriptionArn=sub)
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []


@pytest.mark.restart
def test_subscription_of_a_deleted_queue_survives_a_restart(tmp_path):
    b = WharfProcess(tmp_path / "data").start()
    try:
        sns, sqs = client(b, "sns"), client(b, "sqs")
        arn = sns.create_topic(Name="kept")["TopicArn"]
        url, qarn = new_queue(sqs, name="gone")
        sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
        sqs.delete_queue(QueueUrl=url)
        b.kill9()
        b.start()
        sns, sqs = client(b, "sns"), client(b, "sqs")
        [s] = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        assert s["SubscriptionArn"] == sub
        # SQS refuses the name for 60 s after DeleteQueue, across the restart too (as AWS
        # does); AMQP declares it at once.
        conn = amqp(b)
        try:
            conn.channel().queue_declare(queue="gone", durable=True)
        finally:
            conn.close()
        url = sqs.get_queue_url(QueueName="gone")["QueueUrl"]
        sns.publish(TopicArn=arn, Message="after restart")
        assert json.loads(receive(sqs, url)[0]["Body"])["Message"] == "after restart"
    finally:
        b.stop_quietly()


def test_amqp_cannot_forge_subscription_arguments(broker, sns, sqs, tname):
    arn = sns.create_topic(Name=tname)["TopicArn"]
    _, qarn = new_queue(sqs)
    sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)["SubscriptionArn"]
    binding = {"x-sns-subscription-arn": sub, "x-sns-protocol": "sqs", "x-sns-endpoint": qarn,
               "x-sns-owner": ACCOUNT}
    forged = [
        # An HTTP "subscription" to an address the allow-list would refuse.
        {"x-sns-subscription-arn": arn + ":forged", "x-sns-protocol": "http",
         "x-sns-endpoint": "http://10.9.9.9/"},
        {"x-sns-delivery-policy": "{}"},
        {"x-sns-confirmation-token": "t"},
    ]
    conn = amqp(broker)
    try:
        for args in forged:
            ch = conn.channel()
            ch.queue_declare(queue="", exclusive=True)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_bind(queue=ch.queue_declare(queue="", exclusive=True).method.queue,
                              exchange=tname, arguments=args)
            assert e.value.reply_code == 403, args
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.exchange_bind(destination="amq.fanout", source=tname, arguments=args)
            assert e.value.reply_code == 403, args
        # Nor remove someone's subscription by naming its arguments.
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_unbind(queue=qarn.split(":")[-1], exchange=tname, arguments=binding)
        assert e.value.reply_code == 403
        # What a client may give still works.
        ch = conn.channel()
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        ch.queue_bind(queue=q, exchange=tname, arguments={
            "x-sns-filter-policy": json.dumps({"colour": ["red"]}), "x-sns-raw-message-delivery": "false"})
    finally:
        conn.close()
    assert [s["SubscriptionArn"] for s in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]] == [sub]


def test_queues_of_another_region_or_account_in_this_broker_subscribe(tmp_path):
    # Unsigned requests: a 12-digit access key id names the account (docs/mapping/sqs.md).
    b = WharfProcess(tmp_path / "data", env={"WHARF_SIGV4": "off"}).start()
    try:
        def aws(service, account=ACCOUNT, region=REGION):
            return boto3.client(service, endpoint_url=f"http://127.0.0.1:{b.http_port}", region_name=region,
                                aws_access_key_id=account, aws_secret_access_key="x",
                                config=Config(retries={"max_attempts": 1}))
        sns = aws("sns")
        arn = sns.create_topic(Name="wide")["TopicArn"]
        # Same account, another region: subscribed and confirmed at once, as on AWS.
        west = aws("sqs", region="eu-west-1")
        west_url, west_arn = new_queue(west)
        assert ":eu-west-1:" in west_arn
        west_sub = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=west_arn)["SubscriptionArn"]
        assert west_sub.startswith(arn + ":")
        # Another account: pending until the queue's owner confirms with the
        # SubscriptionConfirmation SNS puts in the queue.
        other = aws("sqs", account="111111111111")
        other_url, other_arn = new_queue(other)
        assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=other_arn)["SubscriptionArn"] == \
            "pending confirmation"
        [c] = receive(other, other_url)
        confirmation = json.loads(c["Body"])
        assert confirmation["Type"] == "SubscriptionConfirmation" and confirmation["TopicArn"] == arn
        sns.publish(TopicArn=arn, Message="before")
        assert json.loads(receive(west, west_url)[0]["Body"])["Message"] == "before"
        assert receive(other, other_url, wait=1) == []
        import urllib.request
        with urllib.request.urlopen(confirmation["SubscribeURL"], timeout=10) as answer:
            assert answer.status == 200
        subs = {s["Endpoint"]: s["SubscriptionArn"] for s in
                sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]}
        assert subs[west_arn] == west_sub and subs[other_arn].startswith(arn + ":")
        sns.publish(TopicArn=arn, Message="after")
        assert json.loads(receive(other, other_url)[0]["Body"])["Message"] == "after"
        assert json.loads(receive(west, west_url)[0]["Body"])["Message"] == "after"
        # The same endpoint again answers the same subscription.
        assert sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=west_arn)["SubscriptionArn"] == west_sub
        # A queue no account of this broker has is refused.
        for missing in ["arn:aws:sqs:us-east-1:222222222222:nope", "arn:aws:sqs:eu-west-1:000000000000:nope"]:
            with pytest.raises(ClientError) as e:
                sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=missing)
            assert code(e) == "InvalidParameter", missing
        # Deleting it keeps the subscription (deliveries go to the dead-letter queue).
        dlq_url, dlq_arn = new_queue(aws("sqs"))
        sns.set_subscription_attributes(SubscriptionArn=west_sub, AttributeName="RedrivePolicy",
                                        AttributeValue=json.dumps({"deadLetterTargetArn": dlq_arn}))
        west.delete_queue(QueueUrl=west_url)
        sns.publish(TopicArn=arn, Message="west is gone")
        assert json.loads(receive(aws("sqs"), dlq_url)[0]["Body"])["Message"] == "west is gone"
        sns.unsubscribe(SubscriptionArn=west_sub)
        assert len(sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]) == 1
    finally:
        b.stop_quietly()
