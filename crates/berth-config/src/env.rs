//! The env file (`KEY=VALUE` secrets) and `${VAR}` interpolation.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ConfigError, Locator};

/// Parses `KEY=VALUE` lines. Blank lines and `#` comments are skipped, `export ` is allowed,
/// and a value wrapped in matching single or double quotes loses the quotes.
pub fn parse_env_file(
    path: &Path,
    src: &str,
) -> Result<BTreeMap<String, String>, Vec<ConfigError>> {
    let loc = Locator { file: path, src };
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let text = line.trim_end_matches(['\n', '\r']);
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = text.len() - trimmed.len();
        let body = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((key, value)) = body.split_once('=') else {
            errors.push(loc.at(start + indent, "expected KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if !is_var_name(key) {
            errors.push(loc.at(
                start + indent,
                format!("invalid variable name {key:?}: use letters, digits and _"),
            ));
            continue;
        }
        vars.insert(key.to_string(), unquote(value.trim()).to_string());
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

pub(crate) fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `${VAR}` names a template uses, in order (`$$` is not one).
pub fn variables(template: &str) -> Vec<String> {
    interpolate(template, &|_| Some(String::new()))
        .map(|i| i.vars)
        .unwrap_or_default()
}

/// Result of interpolating one string.
pub(crate) struct Interpolated {
    pub value: String,
    /// Names of the `${VAR}`s it used: any makes the value a secret.
    pub vars: Vec<String>,
}

/// Replaces `${VAR}` with its value; `$$` is a literal `$`. Returns the missing names as
/// errors (message only; the caller adds the location).
pub(crate) fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut vars = Vec::new();
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                missing.push("unterminated ${ in value".to_string());
                return Err(missing);
            };
            let name = &tail[..end];
            if !is_var_name(name) {
                missing.push(format!("invalid variable name ${{{name}}}"));
            } else if let Some(v) = lookup(name) {
                out.push_str(&v);
                vars.push(name.to_string());
            } else {
                missing.push(format!(
                    "${{{name}}} is not set: add {name}=... to the env file"
                ));
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(Interpolated { value: out, vars })
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        let src = "# secrets\nA=1\nexport B = \"two words\"\n\nC='x=y'\n";
        let vars = parse_env_file(Path::new("e"), src).expect("valid");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x=y");
    }

    #[test]
    fn env_file_bad_line_has_location() {
        let errs = parse_env_file(Path::new("e.env"), "A=1\n  oops\n").unwrap_err();
        assert_eq!(errs[0].to_string(), "e.env:2:3: expected KEY=VALUE");
    }

    #[test]
    fn interpolation() {
        let lookup = |k: &str| (k == "P").then(|| "s3cret".to_string());
        let Ok(r) = interpolate("postgres://bot:${P}@db/$$x", &lookup) else {
            panic!("interpolation failed")
        };
        assert_eq!(r.value, "postgres://bot:s3cret@db/$x");
        assert_eq!(r.vars, vec!["P"]);
        let Err(missing) = interpolate("${NOPE}", &lookup) else {
            panic!("NOPE must be missing")
        };
        assert!(missing[0].contains("${NOPE} is not set"));
    }
}
