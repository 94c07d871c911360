//! `${VAR}` and `${VAR:-default}` in configuration strings; `$$` is a literal `$`.
//!
//! One variable is checked: [`ENV_VARIABLE`] (`GRIDFLOW_ENV`), the environment's name, which
//! the kit's topic names end with (`grid.meter.reading.v1.${GRIDFLOW_ENV:-dev}`): its value
//! must be a word a topic name can carry ([`valid_env_name`]), or the file is refused.

/// The variable naming the environment (`dev`, `recette`, `prod`): it picks the image's
/// `config/<env>.toml` and is the suffix of the kit's topic names.
pub const ENV_VARIABLE: &str = "GRIDFLOW_ENV";

/// Is `name` an environment name a topic name can end with: a lower-case letter, then
/// lower-case letters, digits and `-` (no dot, which would add a level to the topic name)?
pub fn valid_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Replaces variables in `text`, looking them up with `lookup`.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            let value = match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_string(),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            };
            if name == ENV_VARIABLE && !valid_env_name(&value) {
                return Err(format!(
                    "{ENV_VARIABLE}=`{value}` is not an environment name: topic names end with it, so it must be a lower-case letter then lower-case letters, digits or `-` (e.g. dev, recette, prod)"
                ));
            }
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Looks variables up in the process environment.
pub fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("kafka:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(interpolate("${HOST}", &env).unwrap(), "kafka:9092");
        assert_eq!(interpolate("a-${MISSING:-x}-b", &env).unwrap(), "a-x-b");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("cost $$5 $x", &env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn missing_and_malformed_are_errors() {
        assert!(interpolate("${MISSING}", &env)
            .unwrap_err()
            .contains("MISSING"));
        assert!(interpolate("${HOST", &env).is_err());
        assert!(interpolate("${A B}", &env).is_err());
    }

    #[test]
    fn the_environment_name_must_fit_a_topic_name() {
        let with = |value: &'static str| {
            move |name: &str| (name == ENV_VARIABLE).then(|| value.to_string())
        };
        let topic = "grid.meter.reading.v1.${GRIDFLOW_ENV:-dev}";
        assert_eq!(
            interpolate(topic, &env).unwrap(),
            "grid.meter.reading.v1.dev"
        );
        assert_eq!(
            interpolate(topic, &with("")).unwrap(),
            "grid.meter.reading.v1.dev"
        );
        assert_eq!(
            interpolate(topic, &with("recette")).unwrap(),
            "grid.meter.reading.v1.recette"
        );
        assert_eq!(
            interpolate(topic, &with("pre-prod2")).unwrap(),
            "grid.meter.reading.v1.pre-prod2"
        );
        for hostile in [
            "Prod", "re.cette", "prod ", "2prod", "-dev", "dév", "prod/x", "dev}",
        ] {
            let e = interpolate(topic, &with(hostile)).unwrap_err();
            assert!(
                e.contains(&format!("GRIDFLOW_ENV=`{hostile}`")),
                "{hostile}: {e}"
            );
            assert!(e.contains("not an environment name"), "{e}");
        }
        // Set but empty, with no default: refused, not a topic name ending in a dot.
        assert!(interpolate("t.v1.${GRIDFLOW_ENV}", &with(""))
            .unwrap_err()
            .contains("not an environment name"));
        // A default that is not a name is refused too; other variables are not checked.
        assert!(interpolate("${GRIDFLOW_ENV:-Dev}", &env).is_err());
        assert_eq!(interpolate("${MISSING:-A.B}", &env).unwrap(), "A.B");
    }
}
