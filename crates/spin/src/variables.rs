//! Application variables and the `{{ name }}` templates that use them.
//!
//! A variable's value is its `default`, replaced by `SPIN_VARIABLE_<NAME>` (the name upper-cased)
//! in the environment the app runs with (the container's, or `wasmcell up --env`). A `required`
//! variable without a value stops the app before it starts, naming the variable. Templates are
//! resolved once, when the app is loaded, as Spin resolves manifest expressions.

use std::collections::BTreeMap;

use crate::manifest::VariableDecl;

/// The prefix of the environment variables that set application variables.
pub const ENV_PREFIX: &str = "SPIN_VARIABLE_";

/// Every application variable's value. `env` looks up the app's environment.
pub fn resolve(
    decls: &BTreeMap<String, VariableDecl>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for (name, decl) in decls {
        check_name(name)?;
        let variable = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
        let value = match (env(&variable), &decl.default) {
            (Some(value), _) => value,
            (None, Some(default)) if !decl.required => default.clone(),
            (None, _) if decl.required => {
                return Err(format!(
                    "variable `{name}` is required and has no value: set {variable} in the app's environment"
                ));
            }
            (None, _) => {
                return Err(format!(
                    "variable `{name}` has neither a default nor `required = true`: give it one of them"
                ));
            }
        };
        values.insert(name.clone(), value);
    }
    Ok(values)
}

/// A variable name as Spin takes them: lower-case letters, digits and `_`, starting with a
/// letter.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "variable name `{name}` is not valid: lower-case letters, digits and `_`, starting with a letter"
        ))
    }
}

/// `template` with every `{{ name }}` replaced by the variable's value.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{template:?}: a `{{{{` is not closed by `}}}}`"))?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| {
            format!("{template:?} uses variable `{name}`, which [variables] does not declare")
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls(entries: &[(&str, Option<&str>, bool)]) -> BTreeMap<String, VariableDecl> {
        entries
            .iter()
            .map(|(name, default, required)| {
                (
                    name.to_string(),
                    VariableDecl {
                        default: default.map(str::to_owned),
                        required: *required,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn defaults_then_the_environment_and_required_ones_named() {
        let d = decls(&[
            ("greeting", Some("hello"), false),
            ("api_host", Some("a"), false),
        ]);
        let env = |name: &str| (name == "SPIN_VARIABLE_API_HOST").then(|| "b".to_owned());
        let values = resolve(&d, &env).unwrap();
        assert_eq!(
            (values["greeting"].as_str(), values["api_host"].as_str()),
            ("hello", "b")
        );

        let d = decls(&[("token", None, true)]);
        let error = resolve(&d, &|_| None).unwrap_err();
        assert!(
            error.contains("variable `token` is required") && error.contains("SPIN_VARIABLE_TOKEN")
        );
        assert_eq!(resolve(&d, &|_| Some("t".into())).unwrap()["token"], "t");
        assert!(resolve(&decls(&[("x", None, false)]), &|_| None).is_err());
        assert!(resolve(&decls(&[("Bad", Some("v"), false)]), &|_| None).is_err());
    }

    #[test]
    fn templates_render_and_unknown_names_are_refused() {
        let values = BTreeMap::from([("host".to_owned(), "example.com".to_owned())]);
        assert_eq!(
            render("https://{{ host }}/v1", &values).unwrap(),
            "https://example.com/v1"
        );
        assert_eq!(
            render("{{host}}{{ host }}", &values).unwrap(),
            "example.comexample.com"
        );
        assert_eq!(render("plain", &values).unwrap(), "plain");
        assert!(
            render("{{ nope }}", &values)
                .unwrap_err()
                .contains("`nope`")
        );
        assert!(render("{{ host", &values).is_err());
    }
}
