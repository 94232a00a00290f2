//! The catalogue's declarations: names, positional binding, every violation with its field, and schemas that
//! say what validation does.

use redline_catalog::{TaskSpec, builtin};
use serde_json::{Map, Value, json};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn analysis() -> TaskSpec {
    builtin()
        .resolve("process_data_analysis")
        .cloned()
        .expect("declared")
}

#[test]
fn resolves_short_and_celery_names() {
    let c = builtin();
    assert!(c.resolve("process_data_analysis").is_some());
    assert!(
        c.resolve("redline.background.tasks.process_data_analysis")
            .is_some()
    );
    assert!(c.resolve("process_data").is_none());
    assert!(c.resolve("redline.background.tasks.redline.noop").is_none());
}

#[test]
fn binds_positional_arguments_in_declared_order() {
    let bound = analysis()
        .bind(&[json!("a.csv"), json!("basic")], &Map::new())
        .map_err(|v| format!("{v:?}"));
    assert_eq!(
        bound,
        Ok(obj(json!({"data_file": "a.csv", "analysis_type": "basic"})))
    );
    let both = analysis().bind(&[json!("a.csv")], &obj(json!({"data_file": "b.csv"})));
    assert!(both.is_err_and(|v| v[0].field == "kwargs.data_file"));
    let many = analysis().bind(&[json!(1), json!(2), json!(3), json!(4)], &Map::new());
    assert!(many.is_err_and(|v| v[0].field == "args"));
}

#[test]
fn reports_every_violation_with_its_field() {
    let errs = analysis()
        .bind(
            &[],
            &obj(json!({"analysis_type": "weird", "options": 3, "parameters": {}})),
        )
        .err()
        .unwrap_or_default();
    let fields: Vec<&str> = errs.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "kwargs.parameters",
            "kwargs.data_file",
            "kwargs.analysis_type",
            "kwargs.options"
        ]
    );
    assert!(
        errs[2].description.contains("basic, statistical"),
        "{errs:?}"
    );
}

#[test]
fn nested_problems_name_their_path() {
    let errs = analysis()
        .bind(
            &[],
            &obj(json!({"data_file": "a.csv", "analysis_type": "basic",
                        "options": {"columns": ["ticker", "price"]}})),
        )
        .err()
        .unwrap_or_default();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "kwargs.options.columns[1]");
}

#[test]
fn path_rules_apply_at_submit_time() {
    let conversion = builtin()
        .resolve("process_data_conversion")
        .cloned()
        .expect("declared");
    for bad in ["/etc/passwd", "../x.csv", "a/../../b", "", "a\\b"] {
        let r = conversion.bind(
            &[],
            &obj(json!({"input_file": bad, "output_format": "csv", "output_file": "o.csv"})),
        );
        assert!(
            r.is_err_and(|v| v.len() == 1 && v[0].field == "kwargs.input_file"),
            "{bad:?} accepted"
        );
    }
    let ok = conversion.bind(
        &[],
        &obj(json!({"input_file": "in/a..b.csv", "output_format": "parquet", "output_file": "o.parquet",
                    "options": {"compression": "zstd", "unknown_option": 1}})),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn schemas_are_self_contained_and_closed_where_validation_is() {
    for spec in builtin().specs() {
        let text = spec.args_schema.to_string();
        assert!(!text.contains("$ref"), "{}: {text}", spec.name);
        if spec.name != "redline.echo" {
            assert_eq!(
                spec.args_schema["additionalProperties"],
                json!(false),
                "{}",
                spec.name
            );
        }
    }
    let conversion = builtin()
        .resolve("process_data_conversion")
        .cloned()
        .expect("declared");
    assert_eq!(
        conversion.positional,
        ["input_file", "output_format", "output_file", "options"]
    );
    assert_eq!(
        conversion.args_schema["required"],
        json!(["input_file", "output_format", "output_file"])
    );
    assert!(
        conversion.args_schema["properties"]["output_format"]["enum"]
            .as_array()
            .is_some_and(|names| names.contains(&json!("jsonl")))
    );
}

#[test]
fn a_published_spec_round_trips_and_checks_structure() {
    let json = serde_json::to_string(&analysis()).expect("serialize");
    let published: TaskSpec = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(published.positional, analysis().positional);
    let errs = published
        .bind(&[], &obj(json!({"analysis_type": 5, "extra": 1})))
        .err()
        .unwrap_or_default();
    let fields: Vec<&str> = errs.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        ["kwargs.extra", "kwargs.data_file", "kwargs.analysis_type"]
    );
}

#[test]
#[ignore = "prints the schemas"]
fn print_schemas() {
    for spec in builtin().specs() {
        println!(
            "{}: {}",
            spec.name,
            serde_json::to_string_pretty(&spec.args_schema).unwrap_or_default()
        );
    }
}
