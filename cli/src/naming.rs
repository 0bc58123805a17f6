//! Event types and path templates from an operation's own method and path, and which
//! operations are not state changes (docs/openapi-rules.md, "How types are named").
//!
//! A type depends only on its own operation: its path's literal segments (the servers' base path
//! left out), joined with `.`, then a verb from the method: POST `created`, PUT `replaced`,
//! PATCH `updated`, DELETE `deleted`. An action (a POST whose path ends with a word right after
//! a parameter, `/orders/{id}/cancel`, and that documents no 201) is named by that word instead:
//! `orders.cancel`. Only when two operations of one document would get the same type does
//! another operation matter; [`disambiguate`] says how.

use std::collections::BTreeSet;

/// Words that name operations which are not state changes (or whose events would carry
/// credentials): an operation is left out when one of its path's literal segments, or a word of
/// its `operationId`, is one of them (compared lowercase, without `_` and `-`).
pub const NOT_STATE_CHANGES: &[&str] = &[
    "login",
    "logout",
    "signin",
    "signout",
    "token",
    "tokens",
    "oauth",
    "oauth2",
    "auth",
    "authorize",
    "authenticate",
    "session",
    "sessions",
    "search",
    "query",
    "graphql",
];

/// The word of [`NOT_STATE_CHANGES`] that leaves this operation out, and where it was found.
pub fn not_a_state_change(path: &str, operation_id: Option<&str>) -> Option<String> {
    let listed = |word: &str| {
        let normal: String = word
            .chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .flat_map(char::to_lowercase)
            .collect();
        NOT_STATE_CHANGES.contains(&normal.as_str())
    };
    if let Some(segment) = literals(path).find(|s| listed(s)) {
        return Some(format!("the path segment {segment:?}"));
    }
    let id = operation_id?;
    // Single words, and two in a row for the ones written apart (`logIn`, `signOut`).
    let words = words(id);
    let pairs = words.windows(2).map(|w| w.concat());
    words
        .iter()
        .cloned()
        .chain(pairs)
        .find(|w| listed(w))
        .map(|w| format!("the word {w:?} of operationId {id:?}"))
}

/// `loginUser` → login, user; `get_OAuth2Token` → get, o, auth2, token.
fn words(identifier: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    let chars: Vec<char> = identifier.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            out.extend((!current.is_empty()).then(|| std::mem::take(&mut current)));
            previous = None;
            continue;
        }
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        let boundary = match previous {
            Some(p) if c.is_ascii_uppercase() => {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next_lower)
            }
            _ => false,
        };
        if boundary && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(c.to_ascii_lowercase());
        previous = Some(c);
    }
    out.extend((!current.is_empty()).then_some(current));
    out
}

/// The path's segments that are not parameters (`{...}` anywhere in them).
fn literals(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter(|s| !s.is_empty() && !s.contains('{'))
}

/// One type part from a path segment: letters, digits and `_`, other characters as `_` (runs
/// of them as one), none at either end. Empty when nothing is left.
fn type_part(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for c in segment.chars() {
        match c.is_ascii_alphanumeric() {
            true => out.push(c),
            false if !out.ends_with('_') => out.push('_'),
            false => {}
        }
    }
    out.trim_matches('_').to_string()
}

/// The verb of a method, or None for one that makes no events.
fn verb(method: &str) -> Option<&'static str> {
    match method {
        "POST" => Some("created"),
        "PUT" => Some("replaced"),
        "PATCH" => Some("updated"),
        "DELETE" => Some("deleted"),
        _ => None,
    }
}

/// The type of an operation (before [`disambiguate`]): see the module's documentation. `codes`
/// are its documented 2xx codes (a POST documenting 201 creates, whatever its path).
pub fn event_type(method: &str, path: &str, codes: &[u16]) -> Result<String, String> {
    let verb = verb(method).ok_or_else(|| format!("{method} makes no events"))?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let action = match segments.as_slice() {
        [.., parent, last]
            if method == "POST"
                && parent.contains('{')
                && !last.contains('{')
                && !codes.contains(&201) =>
        {
            Some(*last)
        }
        _ => None,
    };
    let mut parts: Vec<String> = literals(path)
        .map(type_part)
        .filter(|p| !p.is_empty())
        .collect();
    match action.map(type_part).filter(|a| !a.is_empty()) {
        // The action's word is already the last part.
        Some(_) if !parts.is_empty() => {}
        _ if parts.is_empty() => {
            return Err("its path has no literal segment to name the type after".into())
        }
        _ => parts.push(verb.to_string()),
    }
    let name = parts.join(".");
    if !proxy_webhooks::model::rules::is_valid_event_type(&name) {
        return Err(format!(
            "the type {name:?} would be longer than 128 characters"
        ));
    }
    Ok(name)
}

/// The parameter names of a path, in order (`/a/{x}/b/{y}` → x, y).
fn parameters(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| type_part(name.trim_start_matches('*')))
        .collect()
}

/// An operation's candidate for [`disambiguate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub event_type: String,
    pub method: String,
    /// The document's path of the operation.
    pub path: String,
}

/// Unique types for a whole document. Operations sharing a type are ordered by how many
/// parameters their path has, then by path and method (never by the document's order): the
/// first keeps the type, each other one gets `_by_<its parameters>` (`orders.created_by_id` for
/// `POST /orders/{id}` beside `POST /orders`), and, if that is still taken, `_2`, `_3`... Returns
/// the final types in the order given, and a message for each renamed operation.
pub fn disambiguate(named: &[Named]) -> (Vec<String>, Vec<String>) {
    let mut order: Vec<usize> = (0..named.len()).collect();
    let key = |i: &usize| {
        named.get(*i).map(|n| {
            (
                n.event_type.clone(),
                parameters(&n.path).len(),
                n.path.clone(),
                n.method.clone(),
            )
        })
    };
    order.sort_by_key(key);
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut types = vec![String::new(); named.len()];
    let mut messages = Vec::new();
    for i in order {
        let Some(n) = named.get(i) else { continue };
        let mut chosen = n.event_type.clone();
        let params = parameters(&n.path);
        if taken.contains(&chosen) && !params.is_empty() {
            chosen = format!("{}_by_{}", n.event_type, params.join("_"));
        }
        let stem = chosen.clone();
        let mut counter = 2;
        while taken.contains(&chosen) {
            chosen = format!("{stem}_{counter}");
            counter += 1;
        }
        if chosen != n.event_type {
            messages.push(format!(
                "{} {}: named {chosen:?}, as {:?} is the type of another operation",
                n.method, n.path, n.event_type
            ));
        }
        taken.insert(chosen.clone());
        if let Some(slot) = types.get_mut(i) {
            *slot = chosen;
        }
    }
    (types, messages)
}

/// The rule's path template: the base path, then the document's path with each `{name}` made a
/// valid capture name (letters, digits, `_`). The plugin's parser decides whether the result is
/// a template (a parameter inside a segment, `/files/{name}.json`, is not).
pub fn template(base: &str, path: &str) -> String {
    let mut out = String::from(base);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !name.contains(['{', '}']) => {
                let name = type_part(name);
                out.push('{');
                out.push_str(if name.is_empty() { "param" } else { &name });
                out.push('}');
            }
            _ => out.push_str(segment),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The sort key that puts rules in the order OpenAPI matches paths, grouped by path: segment by
/// segment, literals by their text and before a parameter; a path before its extensions.
pub fn match_order(template: &str) -> Vec<(u8, String)> {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.contains('{') {
            true => (1, String::new()),
            false => (0, s.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_from_paths_and_methods() {
        let ty = |m: &str, p: &str| event_type(m, p, &[200]).unwrap();
        assert_eq!(ty("POST", "/orders"), "orders.created");
        assert_eq!(ty("PUT", "/orders/{id}"), "orders.replaced");
        assert_eq!(ty("PATCH", "/orders/{id}"), "orders.updated");
        assert_eq!(ty("DELETE", "/orders/{id}"), "orders.deleted");
        assert_eq!(ty("POST", "/customers/{cid}/orders"), "customers.orders");
        assert_eq!(
            event_type("POST", "/customers/{cid}/orders", &[201]).unwrap(),
            "customers.orders.created"
        );
        assert_eq!(
            ty("PATCH", "/customers/{cid}/orders/{oid}"),
            "customers.orders.updated"
        );
        assert_eq!(ty("POST", "/orders/{id}/cancel"), "orders.cancel");
        assert_eq!(
            ty("POST", "/orders/{id}/mark-as-paid"),
            "orders.mark_as_paid"
        );
        assert_eq!(ty("DELETE", "/orders/{id}/cancel"), "orders.cancel.deleted");
        assert_eq!(
            ty("POST", "/api/v1/line-items"),
            "api.v1.line_items.created"
        );
        assert_eq!(
            ty("POST", "/users/me/api.keys"),
            "users.me.api_keys.created"
        );
        assert_eq!(ty("POST", "/{tenant}/cancel"), "cancel");
        assert!(event_type("POST", "/{tenant}", &[])
            .unwrap_err()
            .contains("no literal segment"));
        assert!(event_type("POST", &format!("/{}", "a".repeat(130)), &[])
            .unwrap_err()
            .contains("128"));
        assert!(event_type("GET", "/a", &[]).is_err());
    }

    #[test]
    fn operations_that_are_no_state_change() {
        let out = |p: &str, id: Option<&str>| not_a_state_change(p, id);
        assert_eq!(
            out("/auth/login", None),
            Some("the path segment \"auth\"".into())
        );
        assert_eq!(
            out("/users/sign-in", None),
            Some("the path segment \"sign-in\"".into())
        );
        assert_eq!(
            out("/orders/search", None),
            Some("the path segment \"search\"".into())
        );
        assert_eq!(
            out("/oauth2/token", None),
            Some("the path segment \"oauth2\"".into())
        );
        assert_eq!(
            out("/x", Some("refreshAccessToken")),
            Some("the word \"token\" of operationId \"refreshAccessToken\"".into())
        );
        assert_eq!(
            out("/x", Some("OAuthCallback")),
            Some("the word \"auth\" of operationId \"OAuthCallback\"".into())
        );
        assert_eq!(
            out("/x", Some("logOutAgent")),
            Some("the word \"logout\" of operationId \"logOutAgent\"".into())
        );
        assert_eq!(out("/authors", Some("createAuthor")), None);
        assert_eq!(out("/orders/{token}", Some("create_order")), None);
        assert_eq!(
            out("/orders", Some("queryOrders")).map(|w| w.contains("query")),
            Some(true)
        );
    }

    #[test]
    fn words_of_identifiers() {
        assert_eq!(words("loginUser"), ["login", "user"]);
        assert_eq!(words("get_OAuth2Token"), ["get", "o", "auth2", "token"]);
        assert_eq!(words("HTTPServerLogin"), ["http", "server", "login"]);
        assert_eq!(words("create-order"), ["create", "order"]);
    }

    #[test]
    fn templates() {
        assert_eq!(
            template("/api", "/orders/{order-id}/items/{*rest}"),
            "/api/orders/{order_id}/items/{rest}"
        );
        assert_eq!(template("", "/"), "/");
        assert_eq!(template("/v1", "/"), "/v1");
        assert_eq!(template("", "/files/{name}.json"), "/files/{name}.json");
        assert_eq!(template("", "/a/{}"), "/a/{param}");
    }

    #[test]
    fn duplicates_are_named_by_their_own_parameters() {
        let n = |t: &str, m: &str, p: &str| Named {
            event_type: t.into(),
            method: m.into(),
            path: p.into(),
        };
        let ops = [
            n("orders.created", "POST", "/orders/{id}"),
            n("orders.created", "POST", "/orders"),
            n("a.b.created", "POST", "/a/{x}/b"),
            n("a.b.created", "POST", "/a/b/{x}"),
            n("a.b.created", "POST", "/a/b/{y}/"),
            n("c.created", "POST", "/c"),
            n("c.created", "POST", "/c/"),
        ];
        let (types, messages) = disambiguate(&ops);
        assert_eq!(
            types,
            [
                "orders.created_by_id",
                "orders.created",
                "a.b.created_by_x",
                "a.b.created",
                "a.b.created_by_y",
                "c.created",
                "c.created_2"
            ]
        );
        assert_eq!(messages.len(), 4);
        assert!(messages.contains(&"POST /orders/{id}: named \"orders.created_by_id\", as \"orders.created\" is the type of another operation".to_string()));
        // The document's order does not matter.
        let mut reversed = ops.to_vec();
        reversed.reverse();
        let (mut again, _) = disambiguate(&reversed);
        again.reverse();
        assert_eq!(again, types);
    }

    #[test]
    fn literals_sort_before_parameters() {
        let mut t = vec![
            "/orders/{id}",
            "/orders/search",
            "/orders",
            "/{x}/a",
            "/a/{x}",
        ];
        t.sort_by_key(|t| (match_order(t), t.to_string()));
        assert_eq!(
            t,
            [
                "/a/{x}",
                "/orders",
                "/orders/search",
                "/orders/{id}",
                "/{x}/a"
            ]
        );
    }
}
