"""SNS delivery to HTTP subscribers against a real wharf: the subscriber (sns_http_subscriber.py)
verifies every envelope's signature with the certificate at SigningCertURL and confirms by
fetching SubscribeURL, as an application does. Confirmation through boto3 and the aws command
line, raw delivery, filter policies, retries, the dead-letter queue, the allow-list, posts that
survive a SIGKILL of the broker, and PublishBatch and AMQP publishes reaching the endpoint."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import pika
import pytest
from botocore.exceptions import ClientError

from conftest import EXTERNAL_URL, WharfProcess, wharf_bin
from sns_http_subscriber import SnsSubscriber
from sns_signature import verify_envelope
from test_sns import REGION, SNS_NS, VHOST, client, code, new_queue

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="SNS tests need a wharf of their own")

# Retries at once, so a failing endpoint reaches its outcome without waiting out AWS's 20 s.
QUICK_RETRIES = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 2, "numNoDelayRetries": 2, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


@pytest.fixture(scope="module")
def sns(broker):
    return client(broker, "sns")


@pytest.fixture(scope="module")
def sqs(broker):
    return client(broker, "sqs")


@pytest.fixture
def topic(sns):
    return sns.create_topic(Name=f"h-{uuid.uuid4().hex[:12]}")["TopicArn"]


def of_type(kind):
    return lambda posts: any(p.type == kind for p in posts)


def posts_of(sub, kind):
    return [p for p in sub.posts if p.type == kind]


def subscribe_confirmed(sns, topic, sub, **attributes):
    """Subscribes `sub`, which confirms through SubscribeURL; returns the subscription ARN."""
    answer = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url("/hook"), Attributes=attributes)
    assert answer["SubscriptionArn"] == "pending confirmation"
    sub.wait_for(lambda posts: any(p.confirm_status for p in posts))
    [s] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert s["SubscriptionArn"].startswith(topic + ":")
    return s["SubscriptionArn"]


def test_confirmation_by_subscribe_url_then_signed_notification(sns, topic):
    with SnsSubscriber() as sub:
        arn = subscribe_confirmed(sns, topic, sub)
        [confirmation] = posts_of(sub, "SubscriptionConfirmation")
        assert confirmation.verified is True, confirmation.verified
        env = confirmation.envelope
        assert env["TopicArn"] == topic and env["Token"] and "ConfirmSubscription" in env["SubscribeURL"]
        assert confirmation.headers["x-amz-sns-topic-arn"] == topic
        assert "x-amz-sns-subscription-arn" not in confirmation.headers
        assert confirmation.confirm_status == 200
        attrs = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attrs["PendingConfirmation"] == "false" and attrs["Protocol"] == "http"
        assert json.loads(attrs["EffectiveDeliveryPolicy"])["healthyRetryPolicy"]["numRetries"] == 3
        mid = sns.publish(TopicArn=topic, Message="hello http", Subject="greeting",
                          MessageAttributes={"colour": {"DataType": "String", "StringValue": "red"}})["MessageId"]
        sub.wait_for(of_type("Notification"))
        [n] = posts_of(sub, "Notification")
        assert n.verified is True, n.verified
        assert n.path == "/hook"
        assert n.headers["x-amz-sns-message-type"] == "Notification"
        assert n.headers["x-amz-sns-message-id"] == mid
        assert n.headers["x-amz-sns-topic-arn"] == topic
        assert n.headers["x-amz-sns-subscription-arn"] == arn
        assert n.headers["user-agent"] == "Amazon Simple Notification Service Agent"
        assert n.envelope["Message"] == "hello http" and n.envelope["Subject"] == "greeting"
        assert n.envelope["MessageAttributes"]["colour"] == {"Type": "String", "Value": "red"}
        assert n.envelope["UnsubscribeURL"].endswith(arn.replace(":", "%3A"))


def test_subscribe_url_answers_confirm_subscription_xml(broker, sns, topic):
    with SnsSubscriber(confirm=False) as sub:
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url())
        sub.wait_for(of_type("SubscriptionConfirmation"))
        [s] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert s["SubscriptionArn"] == "PendingConfirmation"
        # Subscribing again while pending: the same subscription, its confirmation sent again.
        assert sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url())["SubscriptionArn"] == \
            "pending confirmation"
        posts = sub.wait_for(lambda ps: len(posts_of_list(ps, "SubscriptionConfirmation")) == 2)
        assert len({p.envelope["Token"] for p in posts_of_list(posts, "SubscriptionConfirmation")}) == 1
        assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1
        assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["SubscriptionsPending"] == "1"
        # Unconfirmed: a publish does not reach it.
        sns.publish(TopicArn=topic, Message="too early")
        url = posts_of(sub, "SubscriptionConfirmation")[0].envelope["SubscribeURL"]
        with urllib.request.urlopen(url, timeout=10) as answer:
            root = ET.fromstring(answer.read())
        assert root.tag == f"{{{SNS_NS}}}ConfirmSubscriptionResponse"
        arn = root.find(f"{{{SNS_NS}}}ConfirmSubscriptionResult/{{{SNS_NS}}}SubscriptionArn").text
        assert arn.startswith(topic + ":")
        # A second visit (subscribers retry) answers the same ARN.
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert arn in answer.read().decode()
        sns.publish(TopicArn=topic, Message="now")
        sub.wait_for(of_type("Notification"))
        assert [p.envelope["Message"] for p in posts_of(sub, "Notification")] == ["now"]


def test_confirm_subscription_through_boto3_and_unsubscribe_confirmation(sns, topic):
    with SnsSubscriber(confirm=False) as sub:
        arn = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(),
                            ReturnSubscriptionArn=True)["SubscriptionArn"]
        sub.wait_for(of_type("SubscriptionConfirmation"))
        assert sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]["PendingConfirmation"] == "true"
        token = posts_of(sub, "SubscriptionConfirmation")[0].envelope["Token"]
        with pytest.raises(ClientError) as e:
            sns.confirm_subscription(TopicArn=topic, Token="not-a-token")
        assert code(e) == "InvalidParameter"
        assert sns.confirm_subscription(TopicArn=topic, Token=token)["SubscriptionArn"] == arn
        assert sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]["PendingConfirmation"] == "false"
        sns.unsubscribe(SubscriptionArn=arn)
        sub.wait_for(of_type("UnsubscribeConfirmation"))
        [u] = posts_of(sub, "UnsubscribeConfirmation")
        assert u.verified is True, u.verified
        assert arn in u.envelope["Message"]
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_raw_delivery_and_filter_policy(sns, topic):
    with SnsSubscriber() as sub:
        subscribe_confirmed(sns, topic, sub, RawMessageDelivery="true",
                            FilterPolicy=json.dumps({"colour": ["red"]}))
        for colour in ["blue", "red"]:
            sns.publish(TopicArn=topic, Message=f"a {colour} one",
                        MessageAttributes={"colour": {"DataType": "String", "StringValue": colour}})
        # Posts of one subscription go out in publish order only by chance; wait for the red
        # one, then a marker published after both, to know the blue one had its chance.
        sns.publish(TopicArn=topic, Message="marker",
                    MessageAttributes={"colour": {"DataType": "String", "StringValue": "red"}})
        posts = sub.wait_for(lambda ps: len(posts_of_list(ps, "Notification")) >= 2)
        bodies = sorted(p.body for p in posts_of_list(posts, "Notification"))
        assert bodies == ["a red one", "marker"]
        for p in posts_of_list(posts, "Notification"):
            assert p.headers["x-amz-sns-rawdelivery"] == "true"


def posts_of_list(posts, kind):
    return [p for p in posts if p.type == kind]


def test_failing_endpoint_is_retried(sns, topic):
    # The confirmation is answered 200, the first notification attempt 500, the retry 200.
    with SnsSubscriber(statuses=[200, 500]) as sub:
        subscribe_confirmed(sns, topic, sub, DeliveryPolicy=QUICK_RETRIES)
        mid = sns.publish(TopicArn=topic, Message="again")["MessageId"]
        posts = sub.wait_for(lambda ps: len(posts_of_list(ps, "Notification")) >= 2)
        notes = posts_of_list(posts, "Notification")
        assert [p.headers["x-amz-sns-message-id"] for p in notes] == [mid, mid]


def test_spent_retries_go_to_the_dead_letter_queue(broker, sns, sqs, topic):
    dlq_url, dlq_arn = new_queue(sqs)
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": "120"})
    with SnsSubscriber(statuses=[200] + [500] * 3) as sub:
        arn = subscribe_confirmed(sns, topic, sub, DeliveryPolicy=QUICK_RETRIES,
                                  RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn}))
        mid = sns.publish(TopicArn=topic, Message="undeliverable")["MessageId"]
        got = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=10, MessageAttributeNames=["All"])
        [m] = got["Messages"]
        env = json.loads(m["Body"])
        assert env["MessageId"] == mid and env["Message"] == "undeliverable" and env["Type"] == "Notification"
        # AWS's SNS guide documents no attributes on dead-letter copies (RequestID, ErrorCode,
        # ErrorMessage are Lambda's dead-letter attributes): the body as posted, nothing added.
        assert "MessageAttributes" not in m
        # One attempt and two retries, all refused.
        assert len(posts_of(sub, "Notification")) == 3
        assert arn
        # The copy expires with the dead-letter queue's retention (seen over AMQP).
        sqs.change_message_visibility(QueueUrl=dlq_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        conn = pika.BlockingConnection(broker.params(virtual_host=VHOST))
        try:
            got = conn.channel().basic_get(dlq_arn.split(":")[-1], auto_ack=True)
            assert got[1] is not None and got[1].expiration == "120000"
        finally:
            conn.close()


def test_pending_subscriptions_page_without_losing_any(sns, topic):
    # Every pending subscription lists as "PendingConfirmation": pages must not be cut on that.
    with SnsSubscriber(confirm=False) as sub:
        for i in range(120):
            sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(f"/pending/{i}"))
        pages = list(sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic))
        listed = [s for p in pages for s in p["Subscriptions"]]
        assert len(pages) == 2
        assert len(listed) == 120
        assert {s["SubscriptionArn"] for s in listed} == {"PendingConfirmation"}
        assert sorted(s["Endpoint"] for s in listed) == sorted(sub.url(f"/pending/{i}") for i in range(120))


def test_bad_input(sns, topic):
    for protocol, endpoint in [("http", "https://127.0.0.1/x"), ("http", "not a url"), ("https", "http://127.0.0.1/")]:
        with pytest.raises(ClientError) as e:
            sns.subscribe(TopicArn=topic, Protocol=protocol, Endpoint=endpoint)
        assert code(e) == "InvalidParameter", (protocol, endpoint)
    for bad in ["nope", json.dumps({"healthyRetryPolicy": {"numRetries": 1000}}), json.dumps({"other": {}})]:
        with pytest.raises(ClientError) as e:
            sns.subscribe(TopicArn=topic, Protocol="http", Endpoint="http://127.0.0.1:9/",
                          Attributes={"DeliveryPolicy": bad})
        assert code(e) == "InvalidParameter", bad
        with pytest.raises(ClientError) as e:
            sns.set_topic_attributes(TopicArn=topic, AttributeName="DeliveryPolicy", AttributeValue=bad)
        assert code(e) == "InvalidParameter", bad
    good = json.dumps({"http": {"defaultHealthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 1, "maxDelayTarget": 2}}})
    sns.set_topic_attributes(TopicArn=topic, AttributeName="DeliveryPolicy", AttributeValue=good)
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["DeliveryPolicy"] == good


def test_topic_delivery_policy_is_the_subscription_default(sns, topic):
    policy = json.dumps({"http": {"defaultHealthyRetryPolicy": {"numRetries": 7, "minDelayTarget": 1, "maxDelayTarget": 1}}})
    sns.set_topic_attributes(TopicArn=topic, AttributeName="DeliveryPolicy", AttributeValue=policy)
    arn = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint="http://127.0.0.1:9/",
                        ReturnSubscriptionArn=True)["SubscriptionArn"]
    effective = json.loads(sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]["EffectiveDeliveryPolicy"])
    assert effective["healthyRetryPolicy"]["numRetries"] == 7
    sns.set_subscription_attributes(SubscriptionArn=arn, AttributeName="DeliveryPolicy", AttributeValue=QUICK_RETRIES)
    effective = json.loads(sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]["EffectiveDeliveryPolicy"])
    assert effective["healthyRetryPolicy"]["numRetries"] == 2


def test_endpoint_outside_the_allow_list_is_refused(tmp_path):
    b = WharfProcess(tmp_path / "data", env={"WHARF_SNS__HTTP_ALLOW": "127.0.0.1"}).start()
    try:
        sns = client(b, "sns")
        topic = sns.create_topic(Name="allow")["TopicArn"]
        for endpoint in ["http://10.1.2.3/hook", "http://localhost:9/"]:
            with pytest.raises(ClientError) as e:
                sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint)
            assert code(e) == "InvalidParameter", endpoint
            assert "Endpoint" in e.value.response["Error"]["Message"]
        ok = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint="http://127.0.0.1:9/")
        assert ok["SubscriptionArn"] == "pending confirmation"
    finally:
        b.stop_quietly()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.restart
def test_post_pending_at_sigkill_is_delivered_after_restart(tmp_path):
    b = WharfProcess(tmp_path / "data").start()
    try:
        sns = client(b, "sns")
        topic = sns.create_topic(Name="durable")["TopicArn"]
        port = free_port()
        # Retries 1 s apart for a minute: still pending when the broker is killed.
        slow = json.dumps({"healthyRetryPolicy": {"numRetries": 60, "minDelayTarget": 1, "maxDelayTarget": 1}})
        with SnsSubscriber(port=port) as sub:
            arn = subscribe_confirmed(sns, topic, sub, DeliveryPolicy=slow)
        mid = sns.publish(TopicArn=topic, Message="kept")["MessageId"]
        b.kill9()
        b.start()
        with SnsSubscriber(port=port) as sub:
            posts = sub.wait_for(of_type("Notification"), timeout=30)
            [n] = posts_of_list(posts, "Notification")
            assert n.headers["x-amz-sns-message-id"] == mid
            assert n.headers["x-amz-sns-subscription-arn"] == arn
            assert n.envelope["Message"] == "kept"
            # Signed before the restart, with the key the restarted broker still serves.
            path = "/" + n.envelope["SigningCertURL"].split("/", 3)[3]
            with urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}{path}", timeout=10) as answer:
                verify_envelope(n.envelope, answer.read())
        # The subscription itself survived too (the restarted broker has a new HTTP port).
        sns = client(b, "sns")
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"][0]["SubscriptionArn"] == arn
    finally:
        b.stop_quietly()


def test_aws_cli_subscribe_http(broker, topic, tmp_path):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="guest", AWS_SECRET_ACCESS_KEY="guest",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    aws = [sys.executable, "-m", "awscli", "sns", "--endpoint-url", f"http://127.0.0.1:{broker.http_port}",
           "--output", "json"]
    with SnsSubscriber() as sub:
        out = subprocess.run(aws + ["subscribe", "--topic-arn", topic, "--protocol", "http",
                                    "--notification-endpoint", sub.url("/cli")],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["SubscriptionArn"] == "pending confirmation"
        posts = sub.wait_for(lambda ps: any(p.confirm_status for p in ps))
        assert posts[0].verified is True and posts[0].path == "/cli"


def test_publish_batch_and_amqp_publish_reach_the_endpoint(broker, sns, topic):
    with SnsSubscriber() as sub:
        subscribe_confirmed(sns, topic, sub)
        out = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[
            {"Id": "a", "Message": "batch one"}, {"Id": "b", "Message": "batch two"}])
        assert len(out["Successful"]) == 2
        conn = pika.BlockingConnection(broker.params(virtual_host=VHOST))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(topic.split(":")[-1], "", b"from amqp",
                             pika.BasicProperties(headers={"colour": "green"}, delivery_mode=2))
        finally:
            conn.close()
        posts = sub.wait_for(lambda ps: len(posts_of_list(ps, "Notification")) >= 3)
        notes = posts_of_list(posts, "Notification")
        assert sorted(p.envelope["Message"] for p in notes) == ["batch one", "batch two", "from amqp"]
        assert all(p.verified is True for p in notes), [p.verified for p in notes]
        [amqp] = [p for p in notes if p.envelope["Message"] == "from amqp"]
        assert amqp.envelope["MessageAttributes"]["colour"]["Value"] == "green"


def test_https_endpoint_with_a_trusted_ca(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run([str(wharf_bin()), "certs", "--out", str(certs)], check=True, capture_output=True, timeout=60)
    b = WharfProcess(tmp_path / "data", env={"WHARF_SNS__HTTPS_CA_FILE": str(certs / "ca.pem")}).start()
    try:
        sns = client(b, "sns")
        topic = sns.create_topic(Name="secure")["TopicArn"]
        with SnsSubscriber(tls=(str(certs / "server.pem"), str(certs / "server-key.pem"))) as sub:
            assert sub.url().startswith("https://")
            answer = sns.subscribe(TopicArn=topic, Protocol="https", Endpoint=sub.url("/tls"))
            assert answer["SubscriptionArn"] == "pending confirmation"
            sub.wait_for(lambda posts: any(p.confirm_status for p in posts))
            sns.publish(TopicArn=topic, Message="over tls")
            posts = sub.wait_for(of_type("Notification"))
            [n] = posts_of_list(posts, "Notification")
            assert n.verified is True and n.envelope["Message"] == "over tls"
    finally:
        b.stop_quietly()


def test_unsubscribe_confirmation_subscribe_url_restores_the_subscription(sns, topic):
    # AWS: "To cancel this operation and restore the subscription, visit the SubscribeURL
    # included in this message."
    with SnsSubscriber() as sub:
        arn = subscribe_confirmed(sns, topic, sub, RawMessageDelivery="true")
        sns.unsubscribe(SubscriptionArn=arn)
        [u] = sub.wait_for(of_type("UnsubscribeConfirmation")) and posts_of(sub, "UnsubscribeConfirmation")
        assert u.verified is True, u.verified
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
        sns.publish(TopicArn=topic, Message="while away")
        with urllib.request.urlopen(u.envelope["SubscribeURL"], timeout=10) as answer:
            root = ET.fromstring(answer.read())
        assert root.find(f"{{{SNS_NS}}}ConfirmSubscriptionResult/{{{SNS_NS}}}SubscriptionArn").text == arn
        [s] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert s["SubscriptionArn"] == arn
        attrs = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attrs["PendingConfirmation"] == "false" and attrs["RawMessageDelivery"] == "true"
        # Visiting it again answers the same ARN (subscribers retry).
        assert sns.confirm_subscription(TopicArn=topic, Token=u.envelope["Token"])["SubscriptionArn"] == arn
        sns.publish(TopicArn=topic, Message="back")
        posts = sub.wait_for(of_type("Notification"))
        assert [p.body for p in posts_of_list(posts, "Notification")] == ["back"]


def test_restoring_after_subscribing_again_answers_the_new_subscription(sns, topic):
    with SnsSubscriber() as sub:
        arn = subscribe_confirmed(sns, topic, sub)
        sns.unsubscribe(SubscriptionArn=arn)
        [u] = sub.wait_for(of_type("UnsubscribeConfirmation")) and posts_of(sub, "UnsubscribeConfirmation")
        again = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url("/hook"),
                              ReturnSubscriptionArn=True)["SubscriptionArn"]
        assert sns.confirm_subscription(TopicArn=topic, Token=u.envelope["Token"])["SubscriptionArn"] == again
        assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1


def test_subscribing_an_http_endpoint_again_compares_only_the_attributes_given(sns, topic):
    with SnsSubscriber(confirm=False) as sub:
        arn = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(), ReturnSubscriptionArn=True,
                            Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]
        assert sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(), ReturnSubscriptionArn=True,
                             Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"] == arn
        assert sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(),
                             ReturnSubscriptionArn=True)["SubscriptionArn"] == arn
        for different in [{"RawMessageDelivery": "false"}, {"DeliveryPolicy": QUICK_RETRIES},
                          {"FilterPolicy": json.dumps({"a": ["b"]})}]:
            with pytest.raises(ClientError) as e:
                sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=sub.url(), Attributes=different)
            assert code(e) == "InvalidParameter", different
            assert "Subscription already exists with different attributes" in e.value.response["Error"]["Message"]
        assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1


def test_unsubscribe_stops_the_retries_of_pending_posts(sns, topic):
    # Retries a second apart, every attempt refused: Unsubscribe must end them (and nothing
    # reaches the dead-letter queue: the message was for a subscription that is gone).
    slow = json.dumps({"healthyRetryPolicy": {"numRetries": 30, "minDelayTarget": 1, "maxDelayTarget": 1}})
    with SnsSubscriber(statuses=[200] + [500] * 100) as sub:
        arn = subscribe_confirmed(sns, topic, sub, DeliveryPolicy=slow)
        sns.publish(TopicArn=topic, Message="retried")
        sub.wait_for(lambda ps: len(posts_of_list(ps, "Notification")) >= 2)
        sns.unsubscribe(SubscriptionArn=arn)
        sub.wait_for(of_type("UnsubscribeConfirmation"))
        after = len(posts_of(sub, "Notification"))
        sub.wait_for(lambda ps: False, timeout=3)
        assert len(posts_of(sub, "Notification")) <= after + 1


def test_stomp_send_reaches_an_http_subscriber(broker, sns, topic):
    import stomp
    with SnsSubscriber() as sub:
        subscribe_confirmed(sns, topic, sub)
        c = stomp.Connection12([(broker.host, broker.stomp_port)], vhost=VHOST, reconnect_attempts_max=1)
        c.connect("guest", "guest", wait=True)
        try:
            c.send(destination=f"/exchange/{topic.split(':')[-1]}", body="from stomp",
                   headers={"colour": "blue", "persistent": "true"})
        finally:
            c.disconnect()
        posts = sub.wait_for(of_type("Notification"))
        [n] = posts_of_list(posts, "Notification")
        assert n.verified is True, n.verified
        assert n.envelope["Message"] == "from stomp"
        assert n.envelope["MessageAttributes"]["colour"] == {"Type": "String", "Value": "blue"}


def test_mqtt_publish_reaches_an_http_subscriber(tmp_path):
    import paho.mqtt.client as mqtt
    b = WharfProcess(tmp_path / "data", env={"WHARF_MQTT__VHOST": VHOST}).start()
    try:
        sns = client(b, "sns")
        topic = sns.create_topic(Name="telemetry")["TopicArn"]
        conn = pika.BlockingConnection(b.params(virtual_host=VHOST))
        try:
            # MQTT publishes on `to-sns/telemetry` reach the topic (docs/mapping/sns.md).
            conn.channel().exchange_bind(destination="telemetry", source="amq.topic",
                                         routing_key="to-sns.telemetry")
        finally:
            conn.close()
        with SnsSubscriber() as sub:
            subscribe_confirmed(sns, topic, sub)
            m = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                            client_id=f"sns-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
            m.username_pw_set("guest", "guest")
            m.connect(b.host, b.mqtt_port, 30)
            m.loop_start()
            try:
                m.publish("to-sns/telemetry", b"from mqtt", qos=1).wait_for_publish(10)
            finally:
                m.loop_stop()
                m.disconnect()
            posts = sub.wait_for(of_type("Notification"))
            [n] = posts_of_list(posts, "Notification")
            assert n.verified is True, n.verified
            assert n.envelope["Message"] == "from mqtt"
            assert n.headers["x-amz-sns-topic-arn"] == topic
    finally:
        b.stop_quietly()


def test_fifo_topics_refuse_http_endpoints(sns):
    # AWS: SNS FIFO topics can't deliver to HTTP(S) endpoints; subscribing one is an error.
    arn = sns.create_topic(Name=f"f-{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    for protocol in ["http", "https"]:
        with pytest.raises(ClientError) as e:
            sns.subscribe(TopicArn=arn, Protocol=protocol, Endpoint=f"{protocol}://127.0.0.1:9/")
        assert code(e) == "InvalidParameter", protocol
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []
