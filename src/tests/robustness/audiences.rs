//! Robustness of audience::resolve.

use super::{mutate_bytes, run, Shown};
use crate::config;
use crate::tests::fixtures::{scaled, seeded};

const AUDIENCE_ITERATIONS: usize = 5000;

#[test]
fn audiences_resolve_any_body_and_value_to_a_valid_consumer_or_nobody() {
    use crate::model::audience::{resolve, Audience, Facts, Target};
    let mut rng = seeded(0xa0d1e);
    let api = config::ApiConfig::default();
    let seed = br#"{"owner": {"id": 42, "name": "acme", "list": ["x", -1, 1.5e3]}}"#;
    for i in 0..scaled(AUDIENCE_ITERATIONS) {
        let body = match rng.below(3) {
            0 => rng.bytes(80),
            _ => mutate_bytes(&mut rng, seed),
        };
        let pointer = rng
            .pick(&[
                "",
                "/owner",
                "/owner/id",
                "/owner/name",
                "/owner/list/1",
                "/~",
                "/a~1b",
            ])
            .to_string();
        let value = rng.bytes(20);
        let params = [(
            "p".to_string(),
            String::from_utf8_lossy(&value).into_owned(),
        )];
        let headers = [("h".to_string(), value.clone())];
        let facts = Facts {
            identification: api.identification(),
            credentials: crate::model::identity::Credentials::default(),
            params: &params,
            request_headers: &headers,
            response_header: Some(&value),
            body: Some(&body),
        };
        for audience in [
            Audience::Json(pointer.clone()),
            Audience::Param("p".into()),
            Audience::Header("h".into()),
            Audience::ResponseHeader("r".into()),
        ] {
            let target = run("audience::resolve", i, &Shown(&body), || {
                resolve(&audience, &facts)
            });
            if let Target::Consumer(name) = &target {
                assert_eq!(
                    crate::model::identity::consumer_name(name.as_bytes()),
                    Some(name.as_str())
                );
            }
        }
    }
}
