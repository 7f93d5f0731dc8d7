//! Table-driven tests: the message and policies of AWS's filter policy documentation, each
//! operator's edges, and the limits and errors.

use serde_json::json;

use super::*;

/// AWS's example message: a String.Array, two Strings and a Number.
fn doc_attributes() -> Vec<(&'static str, AttrValue<'static>)> {
    vec![
        (
            "customer_interests",
            AttrValue::StringArray(r#"["soccer", "rugby", "hockey"]"#),
        ),
        ("store", AttrValue::String("example_corp")),
        ("event", AttrValue::String("order_placed")),
        ("price_usd", AttrValue::Number("210.75")),
    ]
}

/// The same message as a JSON body.
fn doc_body() -> serde_json::Value {
    json!({
        "customer_interests": ["soccer", "rugby", "hockey"],
        "store": "example_corp",
        "event": "order_placed",
        "price_usd": 210.75
    })
}

fn attrs_policy(json: &str) -> FilterPolicy {
    FilterPolicy::parse(json, FilterPolicyScope::MessageAttributes)
        .unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn body_policy(json: &str) -> FilterPolicy {
    FilterPolicy::parse(json, FilterPolicyScope::MessageBody)
        .unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// Policies against AWS's example message, in both scopes (attribute policies are flat, so they
/// read the same against the body).
#[test]
fn documented_policies_against_the_example_message() {
    let cases: &[(&str, bool)] = &[
        // AWS's example policy: all four keys match.
        (
            r#"{"store": ["example_corp"], "event": [{"anything-but": "order_cancelled"}],
                "customer_interests": ["rugby", "football", "baseball"],
                "price_usd": [{"numeric": [">=", 100]}]}"#,
            true,
        ),
        // One key failing fails the whole policy (AND across keys).
        (
            r#"{"store": ["example_corp"], "event": ["order_cancelled"]}"#,
            false,
        ),
        // OR within a key's values; an array matches when any element does.
        (r#"{"customer_interests": ["rugby", "tennis"]}"#, true),
        (r#"{"customer_interests": ["tennis", "golf"]}"#, false),
        // Exact numbers, at five decimal places.
        (r#"{"price_usd": [210.75]}"#, true),
        (r#"{"price_usd": [210.750001]}"#, true),
        (r#"{"price_usd": [210.76]}"#, false),
        // A number never equals a string of the same text.
        (r#"{"price_usd": ["210.75"]}"#, false),
        (r#"{"store": [210.75]}"#, false),
        // prefix / suffix / equals-ignore-case.
        (r#"{"store": [{"prefix": "example"}]}"#, true),
        (r#"{"store": [{"prefix": "corp"}]}"#, false),
        (r#"{"store": [{"suffix": "_corp"}]}"#, true),
        (r#"{"customer_interests": [{"suffix": "ball"}]}"#, false),
        (r#"{"customer_interests": [{"prefix": "hoc"}]}"#, true),
        (
            r#"{"store": [{"equals-ignore-case": "EXAMPLE_Corp"}]}"#,
            true,
        ),
        (r#"{"store": [{"equals-ignore-case": "example"}]}"#, false),
        // anything-but: a list, a single value, numbers, prefix, suffix.
        (
            r#"{"event": [{"anything-but": ["order_cancelled", "order_returned"]}]}"#,
            true,
        ),
        (r#"{"event": [{"anything-but": ["order_placed"]}]}"#, false),
        (r#"{"price_usd": [{"anything-but": [100, 500]}]}"#, true),
        (r#"{"price_usd": [{"anything-but": 210.75}]}"#, false),
        (
            r#"{"event": [{"anything-but": {"prefix": "order_"}}]}"#,
            false,
        ),
        (
            r#"{"event": [{"anything-but": {"prefix": "data-"}}]}"#,
            true,
        ),
        (
            r#"{"event": [{"anything-but": {"suffix": "_placed"}}]}"#,
            false,
        ),
        (
            r#"{"event": [{"anything-but": {"suffix": "-cancelled"}}]}"#,
            true,
        ),
        (
            r#"{"event": [{"anything-but": {"equals-ignore-case": ["ORDER_PLACED"]}}]}"#,
            false,
        ),
        // An array passes anything-but when one element is not excluded.
        (
            r#"{"customer_interests": [{"anything-but": ["rugby", "tennis"]}]}"#,
            true,
        ),
        (
            r#"{"customer_interests": [{"anything-but": ["rugby", "soccer", "hockey"]}]}"#,
            false,
        ),
        // anything-but needs the key present.
        (r#"{"colour": [{"anything-but": ["red"]}]}"#, false),
        // numeric: every comparison and a range.
        (r#"{"price_usd": [{"numeric": ["=", 210.75]}]}"#, true),
        (r#"{"price_usd": [{"numeric": ["=", 301.5]}]}"#, false),
        (r#"{"price_usd": [{"numeric": [">", 210.75]}]}"#, false),
        (r#"{"price_usd": [{"numeric": [">=", 210.75]}]}"#, true),
        (r#"{"price_usd": [{"numeric": ["<", 210.75]}]}"#, false),
        (r#"{"price_usd": [{"numeric": ["<=", 210.75]}]}"#, true),
        (
            r#"{"price_usd": [{"numeric": [">", 0, "<=", 150]}]}"#,
            false,
        ),
        (
            r#"{"price_usd": [{"numeric": [">", 100, "<", 300]}]}"#,
            true,
        ),
        (
            r#"{"price_usd": [{"numeric": [">=", 210.75, "<", 300]}]}"#,
            true,
        ),
        (
            r#"{"price_usd": [{"numeric": [">", 100, "<", 210.75]}]}"#,
            false,
        ),
        // numeric never matches strings.
        (r#"{"store": [{"numeric": [">", 0]}]}"#, false),
        // exists.
        (r#"{"store": [{"exists": true}]}"#, true),
        (r#"{"store": [{"exists": false}]}"#, false),
        (r#"{"colour": [{"exists": false}]}"#, true),
        (r#"{"colour": [{"exists": true}]}"#, false),
        // An absent key fails every other rule.
        (r#"{"colour": ["red"]}"#, false),
        // Rules of different kinds as alternatives of one key.
        (r#"{"store": ["other", {"prefix": "exa"}]}"#, true),
        // $or between keys, with an AND beside it.
        (
            r#"{"store": ["example_corp"], "$or": [{"event": ["order_cancelled"]},
                {"price_usd": [{"numeric": [">", 200]}]}]}"#,
            true,
        ),
        (
            r#"{"store": ["example_corp"], "$or": [{"event": ["order_cancelled"]},
                {"price_usd": [{"numeric": ["<", 200]}]}]}"#,
            false,
        ),
        (
            r#"{"store": ["elsewhere"], "$or": [{"event": ["order_placed"]},
                {"price_usd": [210.75]}]}"#,
            false,
        ),
        // $or inside $or.
        (
            r#"{"$or": [{"event": ["x"]}, {"$or": [{"store": ["y"]}, {"price_usd": [210.75]}]}]}"#,
            true,
        ),
        // The empty policy passes everything.
        ("{}", true),
    ];
    let attributes = doc_attributes();
    let body = doc_body();
    for (json, expected) in cases {
        let policy = attrs_policy(json);
        assert_eq!(
            policy.matches_attributes(&attributes),
            *expected,
            "attributes: {json}"
        );
        let policy = body_policy(json);
        assert_eq!(policy.matches_body(&body), *expected, "body: {json}");
    }
}

#[test]
fn equals_ignore_case_matches_every_casing() {
    let policy = attrs_policy(r#"{"customer_interests": [{"equals-ignore-case": "tennis"}]}"#);
    for value in ["TENNIS", "Tennis", "tennis", "tEnNiS"] {
        assert!(
            policy.matches_attributes(&[("customer_interests", AttrValue::String(value))]),
            "{value}"
        );
    }
    assert!(!policy.matches_attributes(&[("customer_interests", AttrValue::String("tenni"))]));
}

#[test]
fn cidr_matches_ipv4_and_ipv6_addresses() {
    let cases: &[(&str, &str, bool)] = &[
        ("10.0.0.0/24", "10.0.0.0", true),
        ("10.0.0.0/24", "10.0.0.255", true),
        ("10.0.0.0/24", "10.0.1.0", false),
        ("10.0.0.0/24", "not an address", false),
        ("10.0.0.0/24", "::ffff:10.0.0.1", false),
        ("2001:db8::/32", "2001:db8:85a3::8a2e:370:7334", true),
        ("2001:db8::/32", "2001:db9::1", false),
        ("2001:db8::/32", "10.0.0.1", false),
        ("192.0.2.1/32", "192.0.2.1", true),
    ];
    for (network, address, expected) in cases {
        let policy = attrs_policy(&format!(r#"{{"source_ip": [{{"cidr": "{network}"}}]}}"#));
        assert_eq!(
            policy.matches_attributes(&[("source_ip", AttrValue::String(address))]),
            *expected,
            "{network} {address}"
        );
    }
}

#[test]
fn attribute_types_decide_what_compares() {
    let numbers = attrs_policy(r#"{"n": [100]}"#);
    // Number attributes in any notation SNS accepts; custom type labels keep the base type.
    for text in ["100", "100.0", "1E2", "1.00000E+2", " 100 "] {
        assert!(
            numbers.matches_attributes(&[("n", AttrValue::Number(text))]),
            "{text}"
        );
    }
    assert!(numbers.matches_attributes(&[("n", AttrValue::typed("Number.int", "100", b""))]));
    // A String that reads as a number is still a string.
    assert!(!numbers.matches_attributes(&[("n", AttrValue::String("100"))]));
    // String.Array elements keep their JSON types.
    assert!(numbers.matches_attributes(&[("n", AttrValue::StringArray("[\"a\", 100]"))]));
    assert!(!numbers.matches_attributes(&[("n", AttrValue::StringArray("[\"100\"]"))]));
    let booleans = attrs_policy(r#"{"b": [true], "z": [null]}"#);
    assert!(booleans.matches_attributes(&[
        ("b", AttrValue::StringArray("[false, true]")),
        ("z", AttrValue::StringArray("[null]")),
    ]));
    // Binary attributes are ignored: absent for the policy.
    let exists = attrs_policy(r#"{"blob": [{"exists": true}]}"#);
    assert!(!exists.matches_attributes(&[("blob", AttrValue::Binary(b"\x00\x01"))]));
    let absent = attrs_policy(r#"{"blob": [{"exists": false}]}"#);
    assert!(absent.matches_attributes(&[("blob", AttrValue::typed("Binary", "", b"\x00"))]));
    // A String.Array that is not JSON is present, with nothing to compare.
    let interests = attrs_policy(r#"{"i": ["rugby"]}"#);
    assert!(!interests.matches_attributes(&[("i", AttrValue::StringArray("rugby"))]));
    assert!(exists_policy_matches(&[(
        "i",
        AttrValue::StringArray("rugby")
    )]));
}

fn exists_policy_matches(attributes: &[(&str, AttrValue<'_>)]) -> bool {
    attrs_policy(r#"{"i": [{"exists": true}]}"#).matches_attributes(attributes)
}

#[test]
fn body_policies_follow_nested_keys_and_arrays() {
    let body = json!({
        "order": {
            "store": "example_corp",
            "items": [
                {"sku": "a1", "quantity": 2},
                {"sku": "b2", "quantity": 10}
            ],
            "tags": [["gift"], "express"]
        },
        "source_ip": "10.0.0.7",
        "note": null
    });
    let cases: &[(&str, bool)] = &[
        (r#"{"order": {"store": ["example_corp"]}}"#, true),
        (r#"{"order": {"store": ["other"]}}"#, false),
        // Nested arrays flatten.
        (r#"{"order": {"tags": ["gift"]}}"#, true),
        (r#"{"order": {"tags": ["express"]}}"#, true),
        // An array of objects: one element must match all of the nested keys.
        (
            r#"{"order": {"items": {"sku": ["b2"], "quantity": [{"numeric": [">", 5]}]}}}"#,
            true,
        ),
        (
            r#"{"order": {"items": {"sku": ["a1"], "quantity": [{"numeric": [">", 5]}]}}}"#,
            false,
        ),
        // Two levels deep and a top-level key together.
        (
            r#"{"order": {"items": {"sku": [{"prefix": "a"}]}}, "source_ip": [{"cidr": "10.0.0.0/8"}]}"#,
            true,
        ),
        // exists on leaves; an object is not a leaf.
        (r#"{"order": {"store": [{"exists": true}]}}"#, true),
        (r#"{"order": {"missing": [{"exists": false}]}}"#, true),
        (r#"{"order": [{"exists": true}]}"#, false),
        (r#"{"absent": {"deeper": [{"exists": false}]}}"#, true),
        (r#"{"absent": {"deeper": [{"exists": true}]}}"#, false),
        // null is a value.
        (r#"{"note": [null]}"#, true),
        (r#"{"note": [{"exists": true}]}"#, true),
        // $or inside a nested object.
        (
            r#"{"order": {"$or": [{"store": ["x"]}, {"items": {"sku": ["a1"]}}]}}"#,
            true,
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(body_policy(json).matches_body(&body), *expected, "{json}");
    }
    // A body that is not a JSON object matches only the empty policy.
    let policy = body_policy(r#"{"a": [{"exists": false}]}"#);
    assert!(!policy.matches_body(&json!(["a"])));
    assert!(!policy.matches(&[], "not json"));
    assert!(body_policy("{}").matches(&[], "not json"));
    assert!(body_policy(r#"{"a": ["b"]}"#).matches(&[], r#"{"a": "b"}"#));
}

#[test]
fn or_with_operator_names_or_one_branch_is_an_ordinary_key() {
    // Objects using operator names: the `$or` key holds match expressions.
    let policy = attrs_policy(r#"{"$or": [{"prefix": "a"}, {"suffix": "z"}]}"#);
    assert!(policy.matches_attributes(&[("$or", AttrValue::String("abc"))]));
    assert!(!policy.matches_attributes(&[("x", AttrValue::String("abc"))]));
    // A single branch is not an OR either; as a key's values an object there must be an
    // operator, and `x` is none.
    let err = FilterPolicy::parse(
        r#"{"$or": [{"x": ["1"]}]}"#,
        FilterPolicyScope::MessageAttributes,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Invalid parameter: FilterPolicy: Unrecognized match type x"
    );
}

#[test]
fn refused_policies_get_aws_messages() {
    use FilterPolicyScope::{MessageAttributes as A, MessageBody as B};
    let too_many_values: String = format!(
        r#"{{"a": [{}], "b": [{}]}}"#,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        (0..16).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let oversized = format!(r#"{{"a": ["{}"]}}"#, "x".repeat(MAX_POLICY_BYTES));
    let cases: Vec<(&str, FilterPolicyScope, &str)> = vec![
        (r#"{"a":"#, A, "FilterPolicy: failed to parse JSON."),
        ("[]", A, "FilterPolicy: Filter policy must be a JSON object"),
        (
            r#"{"a": ["1"], "b": ["1"], "c": ["1"], "d": ["1"], "e": ["1"], "f": ["1"]}"#,
            A,
            "FilterPolicy: Filter policy can not have more than 5 keys",
        ),
        // $or counts as its largest branch.
        (
            r#"{"a": ["1"], "b": ["1"], "c": ["1"], "d": ["1"],
                "$or": [{"e": ["1"]}, {"f": ["1"], "g": ["1"]}]}"#,
            A,
            "FilterPolicy: Filter policy can not have more than 5 keys",
        ),
        (
            &too_many_values,
            A,
            "FilterPolicy: Filter policy is too complex",
        ),
        (&oversized, A, "FilterPolicy: Filter policy is too large"),
        (
            r#"{"a": []}"#,
            A,
            "FilterPolicy: Empty arrays are not allowed",
        ),
        (
            r#"{"a": "b"}"#,
            A,
            "FilterPolicy: \"a\" must be an object or an array",
        ),
        (
            r#"{"a": 1}"#,
            B,
            "FilterPolicy: \"a\" must be an object or an array",
        ),
        (
            r#"{"a": {"b": ["c"]}}"#,
            A,
            "Filter policy scope MessageAttributes does not support nested filter policy",
        ),
        (
            r#"{"a": [["b"]]}"#,
            A,
            "FilterPolicy: Match value must be String, number, true, false, or null",
        ),
        (
            r#"{"a": [{"prefix": "b", "suffix": "c"}]}"#,
            A,
            "FilterPolicy: Only one key allowed in match expression",
        ),
        (
            r#"{"a": [{"prefix": 1}]}"#,
            A,
            "FilterPolicy: prefix match pattern must be a string",
        ),
        (
            r#"{"a": [{"suffix": null}]}"#,
            A,
            "FilterPolicy: suffix match pattern must be a string",
        ),
        (
            r#"{"a": [{"equals-ignore-case": ["x"]}]}"#,
            A,
            "FilterPolicy: equals-ignore-case match pattern must be a string",
        ),
        (
            r#"{"a": [{"anything-but": {"wildcard": "x*"}}]}"#,
            A,
            "FilterPolicy: Unsupported anything-but pattern: wildcard",
        ),
        (
            r#"{"a": [{"anything-but": []}]}"#,
            A,
            "FilterPolicy: Empty arrays are not allowed",
        ),
        (
            r#"{"a": [{"exists": "yes"}]}"#,
            A,
            "FilterPolicy: exists match pattern must be either true or false.",
        ),
        (
            r#"{"a": [{"contains": "x"}]}"#,
            A,
            "FilterPolicy: Unrecognized match type contains",
        ),
        (
            r#"{"a": [{"numeric": []}]}"#,
            A,
            "FilterPolicy: Invalid member in numeric match: ]",
        ),
        (
            r#"{"a": [{"numeric": [5]}]}"#,
            A,
            "FilterPolicy: Invalid member in numeric match: 5",
        ),
        (
            r#"{"a": [{"numeric": ["!=", 5]}]}"#,
            A,
            "FilterPolicy: Unrecognized numeric range operator: !=",
        ),
        (
            r#"{"a": [{"numeric": ["=", "5"]}]}"#,
            A,
            "FilterPolicy: Value of equals must be numeric",
        ),
        (
            r#"{"a": [{"numeric": [">"]}]}"#,
            A,
            "FilterPolicy: Value of > must be numeric",
        ),
        (
            r#"{"a": [{"numeric": ["<", 5, ">", 1]}]}"#,
            A,
            "FilterPolicy: Too many elements in numeric expression",
        ),
        (
            r#"{"a": [{"numeric": [">", 5, ">", 10]}]}"#,
            A,
            "FilterPolicy: Bad numeric range operator: >",
        ),
        (
            r#"{"a": [{"numeric": [">", 5, 10]}]}"#,
            A,
            "FilterPolicy: Bad value in numeric range: 10",
        ),
        (
            r#"{"a": [{"numeric": [">", 5, "<", "x"]}]}"#,
            A,
            "FilterPolicy: Value of < must be numeric",
        ),
        (
            r#"{"a": [{"numeric": [">", 10, "<", 5]}]}"#,
            A,
            "FilterPolicy: Bottom must be less than top",
        ),
        (
            r#"{"a": [{"numeric": [">", 1, "<", 5, "<", 9]}]}"#,
            A,
            "FilterPolicy: Too many terms in numeric range expression",
        ),
        (
            r#"{"a": [{"cidr": 10}]}"#,
            A,
            "FilterPolicy: cidr match pattern must be a string",
        ),
        (
            r#"{"a": [{"cidr": "10.0.0.0"}]}"#,
            A,
            "FilterPolicy: Malformed CIDR, one '/' required",
        ),
        (
            r#"{"a": [{"cidr": "10.0.0.0/x"}]}"#,
            A,
            "FilterPolicy: Malformed CIDR, mask bits must be an integer",
        ),
        (
            r#"{"a": [{"cidr": "10.0.0.300/8"}]}"#,
            A,
            "FilterPolicy: Nonstandard IP address: 10.0.0.300",
        ),
        (
            r#"{"a": [{"cidr": "10.0.0.0/33"}]}"#,
            A,
            "FilterPolicy: Nonstandard IP address: 10.0.0.0",
        ),
    ];
    for (json, scope, reason) in cases {
        let err = FilterPolicy::parse(json, scope).expect_err(&json[..json.len().min(80)]);
        assert!(
            err.reason().starts_with(reason),
            "{}: got {:?}, want {reason:?}",
            &json[..json.len().min(80)],
            err.reason()
        );
        assert_eq!(
            err.to_string(),
            format!("Invalid parameter: {}", err.reason())
        );
        assert_eq!(
            err.subscribe_message(),
            format!("Invalid parameter: Attributes Reason: {}", err.reason())
        );
    }
}

#[test]
fn limits_count_as_aws_documents() {
    use FilterPolicyScope::MessageBody as B;
    // AWS's example: 3 x 1 x 2 = 6.
    FilterPolicy::parse(
        r#"{"key_a": ["value_one", "value_two", "value_three"], "key_b": ["value_one"],
            "key_c": ["value_one", "value_two"]}"#,
        FilterPolicyScope::MessageAttributes,
    )
    .unwrap();
    // AWS's nested example: 3 x 4 x 2 x 3 = 72, accepted; one more value in the deeper array
    // makes 3 x 5 x 2 x 3 = 90, still accepted; 150 is the last accepted total.
    let nested = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
        format!(
            r#"{{"key_a": {{"key_b": {{"key_c": [{}]}}}}, "key_d": {{"key_e": ["a", "b", "c"]}}}}"#,
            values.join(",")
        )
    };
    FilterPolicy::parse(&nested(4), B).unwrap();
    // 3 x 8 x 6 = 144 <= 150; 3 x 9 x 6 = 162 > 150.
    FilterPolicy::parse(&nested(8), B).unwrap();
    assert_eq!(
        FilterPolicy::parse(&nested(9), B).unwrap_err().reason(),
        "FilterPolicy: Filter policy is too complex"
    );
    // 150 exactly: 10 x 15.
    let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    FilterPolicy::parse(
        &format!(r#"{{"a": [{}], "b": [{}]}}"#, list(10), list(15)),
        FilterPolicyScope::MessageAttributes,
    )
    .unwrap();
    // Payload policies count only top-level keys: five parents with nested keys are fine.
    FilterPolicy::parse(
        r#"{"a": {"x": ["1"], "y": ["1"]}, "b": ["1"], "c": ["1"], "d": ["1"],
            "e": {"x": ["1"], "y": ["1"], "z": ["1"]}}"#,
        B,
    )
    .unwrap();
    // $or branches add up: 100 + 100 > 150.
    assert_eq!(
        FilterPolicy::parse(
            &format!(
                r#"{{"$or": [{{"a": [{}]}}, {{"b": [{}]}}]}}"#,
                list(100),
                list(100)
            ),
            FilterPolicyScope::MessageAttributes,
        )
        .unwrap_err()
        .reason(),
        "FilterPolicy: Filter policy is too complex"
    );
}

#[test]
fn scope_attribute_values() {
    assert_eq!(
        FilterPolicyScope::parse("MessageBody").unwrap(),
        FilterPolicyScope::MessageBody
    );
    assert_eq!(
        FilterPolicyScope::parse("MessageAttributes").unwrap(),
        FilterPolicyScope::MessageAttributes
    );
    assert_eq!(
        FilterPolicyScope::default(),
        FilterPolicyScope::MessageAttributes
    );
    assert_eq!(
        FilterPolicyScope::parse("Body").unwrap_err().to_string(),
        "Invalid parameter: FilterPolicyScope: Invalid value [Body]. Please use either \
         MessageBody or MessageAttributes"
    );
    // The policy's scope picks what `matches` looks at.
    let policy =
        FilterPolicy::parse(r#"{"a": ["b"]}"#, FilterPolicyScope::MessageAttributes).unwrap();
    assert!(policy.matches(&[("a", AttrValue::String("b"))], r#"{"a": "x"}"#));
    assert!(!policy.matches(&[], r#"{"a": "b"}"#));
}
