//! Where a request goes: its target parsed once into a `Route`, from which both the
//! dispatch in `respond` and the label it is counted under in the metrics come.

use crate::metrics::RouteName;

/// A request target, parsed. Paths outside this set are `Other` (404), whatever the
/// method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/order/<uid>`, the uid not checked yet: JSON, or the order's page for a browser.
    Order(&'a str),
    /// `/api/order/<uid>`: the same order, always as JSON.
    ApiOrder(&'a str),
    /// `/`, including a lookup form sent with a blank uid.
    Index,
    /// `/?uid=…` with a uid that is not blank: form-decoded and trimmed.
    Lookup(String),
    /// `/assets/<name>`; only the compiled-in assets exist.
    Asset(&'a str),
    Healthz,
    Readyz,
    Metrics,
    /// `/openapi.json`, the API's description.
    OpenApi,
    Other,
}

fn trim_blank(text: &str) -> &str {
    text.trim_matches([' ', '\t', '\r', '\n'])
}

impl<'a> Route<'a> {
    pub fn parse(url: &'a str) -> Route<'a> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        match path {
            "/" => match query_param(query, "uid") {
                // Spaces, tabs and line ends around the id are dropped, as the OpenAPI
                // document's pattern says; any other character is the id's.
                Some(uid) if !trim_blank(&uid).is_empty() => Route::Lookup(trim_blank(&uid).to_string()),
                _ => Route::Index,
            },
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            _ => {
                if let Some(uid) = path.strip_prefix("/order/") {
                    Route::Order(uid)
                } else if let Some(uid) = path.strip_prefix("/api/order/") {
                    Route::ApiOrder(uid)
                } else if let Some(name) = path.strip_prefix("/assets/") {
                    Route::Asset(name)
                } else {
                    Route::Other
                }
            }
        }
    }

    /// What the request is counted under: a fixed set of names, never the raw path.
    pub fn name(&self) -> RouteName {
        match self {
            Route::Order(_) => RouteName::Order,
            Route::ApiOrder(_) => RouteName::ApiOrder,
            Route::Index => RouteName::Index,
            Route::Lookup(_) => RouteName::Lookup,
            Route::Asset(_) => RouteName::Asset,
            Route::Healthz => RouteName::Healthz,
            Route::Readyz => RouteName::Readyz,
            Route::Metrics => RouteName::Metrics,
            Route::OpenApi => RouteName::OpenApi,
            Route::Other => RouteName::Other,
        }
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` query, decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| form_decode(v))
}

/// A form's value: `+` is a space, then `%XX` escapes as in a URL (an escaped `+`, `%2B`,
/// stays a `+`).
fn form_decode(value: &str) -> String {
    crate::config::percent_decode(&value.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_for_metrics_without_raw_paths() {
        let name = |url: &str| Route::parse(url).name().label();
        assert_eq!(name("/order/abc"), "order");
        assert_eq!(name("/api/order/abc"), "api_order");
        assert_eq!(name("/api/orders"), "other");
        assert_eq!(name("/?uid=x"), "lookup");
        assert_eq!(name("/"), "index");
        assert_eq!(name("/assets/style.css"), "asset");
        assert_eq!(name("/wp-admin"), "other");
        for (i, name) in RouteName::ALL.into_iter().enumerate() {
            assert_eq!(name as usize, i, "{}", name.label());
        }
    }

    #[test]
    fn routes_carry_what_the_handlers_need() {
        assert_eq!(Route::parse("/order/abc?x=1"), Route::Order("abc"));
        assert_eq!(Route::parse("/api/order/abc?x=1"), Route::ApiOrder("abc"));
        assert_eq!(Route::parse("/api/order/"), Route::ApiOrder(""));
        assert_eq!(Route::parse("/?uid=+a%20b+"), Route::Lookup("a b".into()));
        assert_eq!(Route::parse("/?uid=%0D"), Route::Index);
        assert_eq!(Route::parse("/?uid=%0Cx%0D%0A"), Route::Lookup("\u{c}x".into()));
        assert_eq!(Route::parse("/?uid=+"), Route::Index);
        assert_eq!(Route::parse("/?xuid=1"), Route::Index);
        assert_eq!(Route::parse("/assets/style.css"), Route::Asset("style.css"));
        assert_eq!(Route::parse("/healthz"), Route::Healthz);
        assert_eq!(Route::parse("/openapi.json"), Route::OpenApi);
        assert_eq!(Route::parse("/orders"), Route::Other);
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(query_param("uid=a%20b+c&x=1", "uid").as_deref(), Some("a b c"));
        assert_eq!(query_param("x=1", "uid"), None);
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
        assert_eq!(form_decode("%41"), "A");
    }
}
