//! The schema file format (TOML; see `builtin.toml` for a commented
//! example) and its checks. Every error names the line and the field.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::pattern::{parse_template, Constraint};
use super::{Kind, Pattern, RedisType, SchemaError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    exchanges: Spanned<Vec<String>>,
    #[serde(default)]
    placeholders: BTreeMap<String, Spanned<RawPlaceholder>>,
    #[serde(rename = "pattern", default)]
    patterns: Vec<Spanned<RawPattern>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaceholder {
    kind: Spanned<String>,
    values: Option<Vec<String>>,
    shape: Option<String>,
    #[allow(dead_code)] // documentation for readers of the file
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    id: Spanned<String>,
    family: String,
    kind: Kind,
    template: Spanned<String>,
    #[serde(rename = "type")]
    redis_type: RedisType,
    cleanup: Option<Spanned<bool>>,
    description: Option<String>,
}

/// What a schema file declares, checked, before the ambiguity analysis.
pub(super) struct Parsed {
    pub exchanges: Vec<String>,
    pub patterns: Vec<Pattern>,
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// An error at `span` of the file `src`, named by its line.
fn invalid(src: &str, span: Range<usize>, field: String, message: String) -> SchemaError {
    SchemaError::Invalid {
        line: line_of(src, span.start),
        field,
        message,
    }
}

pub(super) fn parse(src: &str) -> Result<Parsed, SchemaError> {
    let raw: RawSchema =
        toml::from_str(src).map_err(|e| SchemaError::Toml(e.to_string().trim_end().to_owned()))?;
    let exchanges = checked_exchanges(src, &raw.exchanges)?;
    let mut constraints = BTreeMap::new();
    for (name, def) in &raw.placeholders {
        let constraint = placeholder_constraint(src, name, def, &exchanges)?;
        constraints.insert(name.clone(), constraint);
    }
    let mut patterns: Vec<Pattern> = Vec::with_capacity(raw.patterns.len());
    for (i, p) in raw.patterns.into_iter().enumerate() {
        let pattern = checked_pattern(src, i, p.into_inner(), &constraints, &patterns)?;
        patterns.push(pattern);
    }
    if patterns.is_empty() {
        return Err(SchemaError::Invalid {
            line: 1,
            field: "pattern".into(),
            message: "no [[pattern]] is declared".into(),
        });
    }
    Ok(Parsed {
        exchanges,
        patterns,
    })
}

/// The exchanges, at least one, each non-empty, without `:` and listed once.
fn checked_exchanges(
    src: &str,
    exchanges: &Spanned<Vec<String>>,
) -> Result<Vec<String>, SchemaError> {
    let span = exchanges.span();
    let exchanges = exchanges.get_ref().clone();
    let bad_exchange = exchanges
        .iter()
        .enumerate()
        .find(|(i, e)| e.is_empty() || e.contains(':') || exchanges[..*i].contains(e));
    if exchanges.is_empty() || bad_exchange.is_some() {
        return Err(invalid(
            src,
            span,
            "exchanges".into(),
            match bad_exchange {
                Some((_, e)) => format!("{e:?} is empty, holds `:` or is listed twice"),
                None => "the list is empty; name at least one exchange".into(),
            },
        ));
    }
    Ok(exchanges)
}

/// What a `[placeholders.NAME]` table allows, with only the fields its
/// kind takes.
fn placeholder_constraint(
    src: &str,
    name: &str,
    def: &Spanned<RawPlaceholder>,
    exchanges: &[String],
) -> Result<Constraint, SchemaError> {
    let field = |f: &str| format!("placeholders.{name}.{f}");
    let (span, def) = (def.span(), def.get_ref());
    let at_table = |what: &str, message: String| invalid(src, span.clone(), field(what), message);
    let forbid = |what: &str, present: bool| {
        if present {
            let kind = def.kind.get_ref();
            return Err(at_table(what, format!("not allowed for kind {kind:?}")));
        }
        Ok(())
    };
    let constraint = match def.kind.get_ref().as_str() {
        "exchange" | "id" => {
            forbid("values", def.values.is_some())?;
            forbid("shape", def.shape.is_some())?;
            if def.kind.get_ref() == "id" {
                Constraint::Id
            } else {
                Constraint::OneOf(exchanges.to_vec())
            }
        }
        "one_of" => {
            forbid("shape", def.shape.is_some())?;
            let values = def
                .values
                .clone()
                .ok_or_else(|| at_table("values", "kind one_of needs `values`".into()))?;
            Constraint::OneOf(values)
        }
        "shape" => {
            forbid("values", def.values.is_some())?;
            let shape = def
                .shape
                .clone()
                .ok_or_else(|| at_table("shape", "kind shape needs `shape`".into()))?;
            Constraint::Shape(shape)
        }
        other => {
            return Err(invalid(
                src,
                def.kind.span(),
                field("kind"),
                format!("unknown kind {other:?}; expected exchange, id, one_of or shape"),
            ))
        }
    };
    match constraint.defect() {
        Some(defect) => Err(invalid(src, span, field("kind"), defect)),
        None => Ok(constraint),
    }
}

/// The `i`th `[[pattern]]`, its id unlike those of the `earlier` ones.
fn checked_pattern(
    src: &str,
    i: usize,
    p: RawPattern,
    constraints: &BTreeMap<String, Constraint>,
    earlier: &[Pattern],
) -> Result<Pattern, SchemaError> {
    let id = p.id.get_ref().clone();
    let field = |f: &str| format!("pattern[{i}] ({id}).{f}");
    if id.is_empty() || earlier.iter().any(|q| q.id == id) {
        return Err(invalid(
            src,
            p.id.span(),
            field("id"),
            "pattern ids must be non-empty and unique".into(),
        ));
    }
    let segments = parse_template(p.template.get_ref(), constraints)
        .map_err(|m| invalid(src, p.template.span(), field("template"), m))?;
    let cleanup = p.cleanup.as_ref().is_some_and(|c| *c.get_ref());
    if cleanup && p.kind != Kind::Legacy {
        return Err(invalid(
            src,
            p.cleanup.expect("set").span(),
            field("cleanup"),
            "only legacy patterns may be deleted by cleanup-legacy".into(),
        ));
    }
    Ok(Pattern {
        id,
        family: p.family,
        kind: p.kind,
        template: p.template.into_inner(),
        redis_type: p.redis_type,
        cleanup,
        description: p.description,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Schema;

    const HEAD: &str = "exchanges = [\"okx\"]\n[placeholders.user_id]\nkind = \"id\"\n";

    fn err(src: &str) -> String {
        match Schema::from_toml(src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let src = format!(
            "{HEAD}\n[[pattern]]\nid = \"a\"\nfamily = \"f\"\nkind = \"legacy\"\ntemplate = \"a:{{uid}}\"\ntype = \"string\"\n"
        );
        let e = err(&src);
        assert!(e.contains("line 9"), "{e}");
        assert!(e.contains("pattern[0] (a).template"), "{e}");
        assert!(e.contains("{uid} is not declared"), "{e}");
    }

    #[test]
    fn toml_errors_keep_their_position() {
        let e = err(&format!(
            "{HEAD}[[pattern]]\nid = \"a\"\nfamily = \"f\"\nkind = \"old\"\ntemplate = \"a\"\ntype = \"string\"\n"
        ));
        assert!(e.contains("line 7"), "{e}");
        assert!(e.contains("unknown variant `old`"), "{e}");
        let e = err(&format!("{HEAD}colour = 1\n"));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn semantic_checks() {
        let pat = |extra: &str| {
            format!("{HEAD}[[pattern]]\nid = \"a\"\nfamily = \"f\"\nkind = \"standard\"\ntemplate = \"a:{{user_id}}\"\ntype = \"hash\"\n{extra}")
        };
        assert!(err(&pat("cleanup = true\n")).contains("only legacy"));
        assert!(err(&format!(
            "{}[[pattern]]\nid = \"a\"\nfamily = \"f\"\nkind = \"legacy\"\ntemplate = \"b\"\ntype = \"any\"\n",
            pat("")
        ))
        .contains("unique"));
        assert!(err(HEAD).contains("no [[pattern]]"));
        assert!(err("exchanges = []\n").contains("exchanges"));
        assert!(
            err(&format!("{HEAD}[placeholders.s]\nkind = \"one_of\"\n")).contains("needs `values`")
        );
        assert!(err(&format!(
            "{HEAD}[placeholders.s]\nkind = \"one_of\"\nvalues = [\"a:b\"]\n"
        ))
        .contains("holds `:`"));
        assert!(
            err(&format!("{HEAD}[placeholders.s]\nkind = \"regex\"\n")).contains("unknown kind")
        );
        assert!(Schema::from_toml(&pat("")).is_ok());
    }
}
