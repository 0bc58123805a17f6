//! Robustness of signing.

use super::{fuzz_input, run};
use crate::model::signing::Secret;
use crate::tests::fixtures::{scaled, seeded, STATIC_SECRET};

#[test]
fn secrets_never_panic() {
    let mut rng = seeded(0x5ec7);
    let corpus: Vec<Vec<u8>> = vec![
        STATIC_SECRET.as_bytes().to_vec(),
        b"whsec_AAAA".to_vec(),
        b"whsec_AA==".to_vec(),
        format!("whsec_{}", "A".repeat(88)).into_bytes(),
    ];
    for i in 0..scaled(10_000) {
        let text = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let parsed = run("Secret::parse", i, &text, || Secret::parse(&text));
        match parsed {
            Ok(secret) => {
                assert!(text.starts_with("whsec_"), "{text:?}");
                let signature = secret.sign("msg_1", rng.next(), &rng.bytes(64));
                assert!(signature.starts_with("v1,") && signature.len() == 47);
            }
            Err(problem) => assert!(!problem.is_empty()),
        }
    }
}
