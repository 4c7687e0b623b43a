use super::*;

fn migrate(value: &str) -> MigratePlan {
    match plan_value(value.as_bytes(), PlanOptions::default()) {
        UserPlan::Migrate(p) => p,
        other => panic!("expected a migration plan, got {other:?}"),
    }
}

fn quarantine_tag(value: &[u8]) -> &'static str {
    match plan_value(value, PlanOptions::default()) {
        UserPlan::Quarantine { reason, .. } => reason.tag(),
        other => panic!("expected quarantine, got {other:?}"),
    }
}

#[test]
fn side_comes_from_pos_side_in_any_case() {
    assert_eq!(side_of(Some("LONG"), Some(-3.0)), Side::Long);
    assert_eq!(side_of(Some("Short"), Some(2.0)), Side::Short);
}

#[test]
fn long_short_mode_short_with_positive_pos_is_short() {
    let p = migrate(r#"[{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"5"}]"#);
    assert_eq!(p.positions[0].side, Side::Short);
}

#[test]
fn net_and_missing_pos_side_use_the_sign() {
    assert_eq!(side_of(Some("net"), Some(-1.0)), Side::Short);
    assert_eq!(side_of(Some("net"), Some(1.0)), Side::Long);
    assert_eq!(side_of(None, Some(-0.1)), Side::Short);
    assert_eq!(side_of(None, None), Side::Long);
    assert_eq!(side_of(Some("net"), Some(0.0)), Side::Long);
    let p = migrate(r#"[{"instId":"ETH-USDT-SWAP","posSide":"net","pos":"-2"}]"#);
    assert_eq!(p.positions[0].side, Side::Short);
    let p = migrate(r#"[{"instId":"ETH-USDT-SWAP","pos":-2}]"#);
    assert_eq!(p.positions[0].side, Side::Short);
}

#[test]
fn every_field_kept_in_order_with_non_strings_as_compact_json() {
    let p = migrate(
        r#"[{"instId":"BTC-USDT","pos":"1","closeOrderAlgo": [ ],"extra":{ "b" : 1, "a" : 2 },"flag":true,"px":3.5,"big":123456789012345678901234567890,"n":null,"s":"a \"q\" é"}]"#,
    );
    let fields = &p.positions[0].fields;
    let got: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("instId", "BTC-USDT"),
            ("pos", "1"),
            ("closeOrderAlgo", "[]"),
            ("extra", r#"{"b":1,"a":2}"#),
            ("flag", "true"),
            ("px", "3.5"),
            ("big", "123456789012345678901234567890"),
            ("n", "null"),
            ("s", "a \"q\" é"),
        ]
    );
}

#[test]
fn compact_json_keeps_whitespace_inside_strings() {
    assert_eq!(
        compact_json(r#"{ "a b" : [ 1 , "x \" y" ] }"#),
        r#"{"a b":[1,"x \" y"]}"#
    );
    assert_eq!(compact_json(r#"["\\", " "]"#), r#"["\\"," "]"#);
}

#[test]
fn closed_positions_migrate_by_default_and_are_counted_when_skipped() {
    let v = r#"[{"instId":"A","pos":"0"},{"instId":"B","pos":"1"}]"#;
    assert_eq!(migrate(v).positions.len(), 2);
    let UserPlan::Migrate(p) = plan_value(v.as_bytes(), PlanOptions { skip_closed: true }) else {
        panic!()
    };
    assert_eq!(p.positions.len(), 1);
    assert_eq!(p.skipped_closed, 1);
}

#[test]
fn empty_array_and_empty_object_migrate_with_no_positions() {
    assert!(migrate("[]").positions.is_empty());
    assert!(migrate(" {} ").positions.is_empty());
}

#[test]
fn object_keyed_by_inst_id_migrates() {
    let p = migrate(
        r#"{"BTC-USDT":{"instId":"BTC-USDT","pos":"-1"},"ETH-USDT":{"instId":"ETH-USDT","pos":"2"}}"#,
    );
    assert_eq!(p.shape, ValueShape::ObjectByInstId);
    let members: Vec<String> = p.positions.iter().map(|p| p.index_member()).collect();
    assert_eq!(members, ["BTC-USDT:short", "ETH-USDT:long"]);
}

#[test]
fn hedged_symbol_gives_two_positions() {
    let p = migrate(
        r#"[{"instId":"X","posSide":"long","pos":"1"},{"instId":"X","posSide":"short","pos":"1"}]"#,
    );
    assert_eq!(p.positions.len(), 2);
}

#[test]
fn plan_quarantines_malformed_values() {
    assert_eq!(quarantine_tag(b"not json"), "not_json");
    assert_eq!(quarantine_tag(b"\xff\xfe"), "not_json");
    assert_eq!(quarantine_tag(b"[1,"), "not_json");
    assert_eq!(quarantine_tag(b"42"), "not_array_or_object");
    assert_eq!(quarantine_tag(b"\"[]\""), "not_array_or_object");
    assert_eq!(quarantine_tag(b"null"), "not_array_or_object");
    assert_eq!(quarantine_tag(b"[1]"), "position_not_object");
    assert_eq!(quarantine_tag(br#"{"A":[]}"#), "position_not_object");
}

/// Regression: a lone surrogate inside a string was reported as "position
/// #0 is not an object"; the report must say what is wrong.
#[test]
fn a_lone_surrogate_is_reported_as_unreadable_not_as_a_non_object() {
    for value in [
        &br#"[{"instId":"BTC-USDT-SWAP","pos":"1","note":"\ud800"}]"#[..],
        &br#"[{"instId":"BTC\ud800","pos":"1"}]"#[..],
    ] {
        let UserPlan::Quarantine { reason, .. } = plan_value(value, PlanOptions::default()) else {
            panic!("planned: {}", String::from_utf8_lossy(value));
        };
        assert_eq!(reason.tag(), "position_unreadable", "{reason}");
        assert!(
            reason
                .to_string()
                .contains("position #0 is not readable JSON"),
            "{reason}"
        );
    }
    assert_eq!(quarantine_tag(br#"[{"pos":"1"}]"#), "missing_inst_id");
    assert_eq!(quarantine_tag(br#"[{"instId":7}]"#), "invalid_inst_id");
    assert_eq!(quarantine_tag(br#"[{"instId":""}]"#), "invalid_inst_id");
    assert_eq!(quarantine_tag(br#"[{"instId":"a:b"}]"#), "invalid_inst_id");
    assert_eq!(
        quarantine_tag(br#"[{"instId":"A","pos":"1","pos":"2"}]"#),
        "duplicate_field"
    );
    assert_eq!(
        quarantine_tag(br#"{"A":{"instId":"B"}}"#),
        "object_key_not_inst_id"
    );
    assert_eq!(
        quarantine_tag(br#"[{"instId":"A","migrated_at":"x"}]"#),
        "reserved_field"
    );
}

#[test]
fn plan_quarantines_colliding_positions() {
    let v = br#"[{"instId":"A","pos":"1"},{"instId":"A","posSide":"long","pos":"2"}]"#;
    match plan_value(v, PlanOptions::default()) {
        UserPlan::Quarantine { reason, positions } => {
            assert_eq!(
                reason,
                QuarantineReason::Collision {
                    member: "A:long".into()
                }
            );
            assert_eq!(positions, 2);
        }
        other => panic!("{other:?}"),
    }
    // Skipping a closed one does not resolve a collision silently.
    let v = br#"[{"instId":"A","pos":"0"},{"instId":"A","pos":"2"}]"#;
    assert!(matches!(
        plan_value(v, PlanOptions { skip_closed: true }),
        UserPlan::Quarantine { .. }
    ));
}

#[test]
fn escaped_names_and_strings_mean_what_they_decode_to() {
    // `\u0073` is `s`: the member is instId, and its value decodes too.
    let plan = migrate(r#"[{"in\u0073tId":"B\u0054C","pos":"1","note":"a\"b"}]"#);
    let p = &plan.positions[0];
    assert_eq!(p.inst_id, "BTC");
    assert_eq!(p.fields[0], ("instId".to_owned(), "BTC".to_owned()));
    assert_eq!(p.fields[2], ("note".to_owned(), "a\"b".to_owned()));
    // An escaped spelling of a name already present is a duplicate.
    let v = br#"[{"instId":"A","pos":"1","\u0070os":"2"}]"#;
    assert_eq!(quarantine_tag(v), "duplicate_field");
}

#[test]
fn duplicates_are_found_in_small_and_large_objects() {
    let small: Vec<(Cow<str>, &RawValue)> = Vec::new();
    assert_eq!(first_duplicate(&small), None);
    let one: &RawValue = serde_json::from_str("1").unwrap();
    for n in [3, DUPLICATE_SCAN_LIMIT + 5] {
        let mut members: Vec<(Cow<str>, &RawValue)> =
            (0..n).map(|i| (Cow::Owned(format!("f{i}")), one)).collect();
        assert_eq!(first_duplicate(&members), None, "{n} distinct names");
        members.push((Cow::Borrowed("f1"), one));
        members.push((Cow::Borrowed("f0"), one));
        assert_eq!(
            first_duplicate(&members).as_deref(),
            Some("f1"),
            "{n} names"
        );
    }
}

#[test]
fn leading_whitespace_and_scalars_are_classified_as_before() {
    let plan = migrate("  \n [{\"instId\":\"A\",\"pos\":\"1\"}]");
    assert_eq!(plan.positions.len(), 1);
    assert_eq!(quarantine_tag(b" 42"), "not_array_or_object");
    assert_eq!(quarantine_tag(b"[1,"), "not_json");
    assert_eq!(quarantine_tag(b"{\"a\":}"), "not_json");
    assert_eq!(quarantine_tag(b"[] x"), "not_json");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Compacting never changes the parsed value.
        #[test]
        fn compact_json_is_value_preserving(v in any_json()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let compacted = compact_json(&pretty);
            let back: serde_json::Value = serde_json::from_str(&compacted).unwrap();
            prop_assert_eq!(back, v);
            prop_assert!(!compacted.contains('\n'));
        }

        /// The unescaped fast path reads a string literal as the parser does.
        #[test]
        fn string_value_decodes_as_serde_json(s in "\\PC{0,12}") {
            let literal = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(string_value(&literal), Some(s));
        }

        /// Planning never panics on arbitrary bytes.
        #[test]
        fn plan_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = plan_value(&bytes, PlanOptions::default());
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ a-z\"\\\\é]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-z ]{1,4}", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}
