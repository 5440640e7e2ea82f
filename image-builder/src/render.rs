//! Handlebars rendering of template files: strict (a missing variable is an error) and without
//! HTML escaping (these are config files and scripts, not web pages).

use std::collections::BTreeMap;

use handlebars::Handlebars;
use serde::Serialize;

/// A template that could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("failed to render `{name}`")]
pub struct RenderError {
    /// The template's name (its path in the template folder or its spec key).
    pub name: String,
    /// What handlebars reported (missing variable, syntax error).
    #[source]
    pub err: Box<handlebars::RenderError>,
}

fn engine() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

/// Renders `template` (named `name` in errors) with `data`.
pub fn render_template<T: Serialize>(
    name: &str,
    template: &str,
    data: &T,
) -> Result<String, RenderError> {
    engine()
        .render_template(template, data)
        .map_err(|err| RenderError {
            name: name.to_owned(),
            err: Box::new(err),
        })
}

/// Renders a spec string that may reference `[vars]`.
pub(crate) fn render_str(
    name: &str,
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, RenderError> {
    if !template.contains("{{") {
        return Ok(template.to_owned());
    }
    render_template(name, template, vars)
}

/// The data a template file sees: every `[vars]` entry at the top level, plus `image` with the
/// spec's identity and system settings.
#[derive(Debug, Serialize)]
pub(crate) struct FileContext<'a> {
    #[serde(flatten)]
    pub(crate) vars: &'a BTreeMap<String, String>,
    pub(crate) image: ImageContext<'a>,
}

/// The `image` object of [`FileContext`].
#[derive(Debug, Serialize)]
pub(crate) struct ImageContext<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) locale: &'a str,
    pub(crate) timezone: &'a str,
    pub(crate) suite: &'a str,
}

impl<'a> FileContext<'a> {
    pub(crate) fn new(spec: &'a crate::Spec) -> Self {
        FileContext {
            vars: &spec.vars,
            image: ImageContext {
                name: &spec.name,
                version: &spec.version,
                hostname: &spec.hostname,
                locale: &spec.locale,
                timezone: &spec.timezone,
                suite: &spec.bootstrap.suite,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_unescaped() {
        let mut vars = BTreeMap::new();
        vars.insert("a".to_owned(), "<x & 'y'>".to_owned());
        assert_eq!(
            render_str("t", "v={{a}}", &vars).expect("renders"),
            "v=<x & 'y'>"
        );
        let err = render_str("t", "{{missing}}", &vars).expect_err("strict");
        assert_eq!(err.to_string(), "failed to render `t`");
    }
}
