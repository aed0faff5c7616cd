//! Token checks through the real `caas standalone` process. Tokens are forged here with the
//! data directory's own signing key (and with others), so each test varies exactly one thing:
//! `alg: none`, another key under the same `kid`, HMAC with the public key, expired, not yet
//! valid, wrong `aud`/`iss`/`typ`, unknown `kid`; then a suspended tenant and revoked users.
//! Each is refused with 401 and its code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{Http, Standalone, unique};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TYP: &str = "caas-user+jwt";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(tenant: &str, user: &str) -> Value {
    let t = now();
    json!({
        "iss": "caas", "aud": "caas-api", "sub": user, "tid": tenant,
        "iat": t, "nbf": t, "exp": t + 600,
        "jti": uuid::Uuid::new_v4().simple().to_string(),
    })
}

fn sign(kid: &str, key: &EncodingKey, alg: Algorithm, typ: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.typ = typ.map(str::to_string);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A fresh Ed25519 key as PKCS#8 PEM.
fn new_key() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

fn encoding_key(k: &ed25519_dalek::SigningKey) -> EncodingKey {
    let pem = k
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem");
    EncodingKey::from_ed_pem(pem.as_bytes()).expect("encoding key")
}

/// `GET /v1/conversations` with `token`: the cheapest authenticated call.
async fn probe(http: &Http, token: &str) -> common::Resp {
    http.get("/v1/conversations", token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let tenant = unique("jwt-");
    let app = http.create_tenant(&tenant).await;
    // The user exists (token exchange creates it).
    let issued = http.token(&app, "alice").await;
    probe(&http, &issued).await.expect(200, "an issued token");

    let (kid, pem) = sa.signing_key();
    let real = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("the data dir's key");
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).expect("encoding key");
    let good = claims(&tenant, "alice");

    // Control: a token forged here with the real key is accepted, so every refusal below is
    // caused by the one thing it changes.
    let forged = sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &good);
    probe(&http, &forged)
        .await
        .expect(200, "a correctly signed token");

    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    // alg none, with and without a signature part.
    let none_header = json!({"alg": "none", "typ": TYP, "kid": kid});
    cases.push((
        "alg none",
        format!("{}.{}.", b64(&none_header), b64(&good)),
        "token_invalid",
    ));
    cases.push((
        "alg none, no signature part",
        format!("{}.{}", b64(&none_header), b64(&good)),
        "token_invalid",
    ));
    // alg none with the real signature of the same payload.
    let real_sig = forged.rsplit('.').next().expect("signature").to_string();
    cases.push((
        "alg none with a valid signature",
        format!("{}.{}.{real_sig}", b64(&none_header), b64(&good)),
        "token_invalid",
    ));

    // Another key under the same kid.
    let other = encoding_key(&new_key());
    cases.push((
        "signed with another key, same kid",
        sign(&kid, &other, Algorithm::EdDSA, Some(TYP), &good),
        "token_invalid",
    ));

    // Algorithm confusion: HMAC keyed with the public key.
    let public_pem = real
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("public pem");
    for (name, secret) in [
        ("HS256 keyed with the public key PEM", public_pem.as_bytes()),
        (
            "HS256 keyed with the raw public key",
            real.verifying_key().as_bytes().as_slice(),
        ),
    ] {
        cases.push((
            name,
            sign(
                &kid,
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
                Some(TYP),
                &good,
            ),
            "token_invalid",
        ));
    }

    // Time: expired, not yet valid (both well beyond the 30 s leeway).
    let mut expired = good.clone();
    expired["iat"] = json!(now() - 7200);
    expired["nbf"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    cases.push((
        "expired",
        sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &expired),
        "token_expired",
    ));
    let mut early = good.clone();
    early["nbf"] = json!(now() + 3600);
    early["exp"] = json!(now() + 7200);
    cases.push((
        "not yet valid",
        sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &early),
        "token_not_yet_valid",
    ));

    // Audience, issuer, type.
    let mut aud = good.clone();
    aud["aud"] = json!("someone-else");
    cases.push((
        "wrong aud",
        sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &aud),
        "token_invalid",
    ));
    let mut iss = good.clone();
    iss["iss"] = json!("evil");
    cases.push((
        "wrong iss",
        sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &iss),
        "token_invalid",
    ));
    cases.push((
        "typ JWT",
        sign(&kid, &key, Algorithm::EdDSA, Some("JWT"), &good),
        "token_invalid",
    ));
    cases.push((
        "no typ",
        sign(&kid, &key, Algorithm::EdDSA, None, &good),
        "token_invalid",
    ));
    let mut no_exp = good.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    cases.push((
        "no exp",
        sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &no_exp),
        "token_invalid",
    ));

    // Unknown kid (signed by a key the server does not have), and no kid.
    cases.push((
        "unknown kid",
        sign(
            "k-unknown",
            &encoding_key(&new_key()),
            Algorithm::EdDSA,
            Some(TYP),
            &good,
        ),
        "token_invalid",
    ));
    cases.push((
        "unknown kid, real key",
        sign("k-unknown", &key, Algorithm::EdDSA, Some(TYP), &good),
        "token_invalid",
    ));
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some(TYP.into());
    cases.push((
        "no kid",
        jsonwebtoken::encode(&h, &good, &key).expect("sign"),
        "token_invalid",
    ));

    // Tampered payload under a valid signature; garbage.
    let parts: Vec<&str> = forged.split('.').collect();
    let mut bob = good.clone();
    bob["sub"] = json!("bob");
    cases.push((
        "payload swapped under a valid signature",
        format!("{}.{}.{}", parts[0], b64(&bob), parts[2]),
        "token_invalid",
    ));
    cases.push(("garbage", "a.b.c".into(), "token_invalid"));

    // A well-signed token for a tenant that does not exist.
    let ghost = claims("no-such-tenant", "alice");
    let r = probe(
        &http,
        &sign(&kid, &key, Algorithm::EdDSA, Some(TYP), &ghost),
    )
    .await;
    assert_eq!(
        r.status, 401,
        "a token of an unknown tenant: {} {}",
        r.status, r.body
    );

    for (name, token, code) in &cases {
        probe(&http, token).await.expect_error(401, code, name);
    }

    // No or malformed Authorization header.
    http.call("GET", "/v1/conversations", None, None)
        .await
        .expect_error(401, "unauthenticated", "no token");
    let r = http
        .client
        .get(format!("{}/v1/conversations", http.api))
        .header("authorization", format!("Basic {issued}"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401, "Basic scheme");

    // The admin API does not take user tokens, nor a wrong admin token.
    http.call("GET", "/admin/v1/tenants", Some(&issued), None)
        .await
        .expect_error(401, "invalid_credentials", "user token on the admin API");
    http.call("GET", "/admin/v1/tenants", None, None)
        .await
        .expect_error(401, "unauthenticated", "no admin token");
    sa.proc.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_tenants_and_revoked_users_are_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let tenant = unique("sus-");
    let app = http.create_tenant(&tenant).await;
    let other = http.create_tenant(&unique("ok-")).await;
    let alice = http.token(&app, "alice").await;
    let bob = http.token(&app, "bob").await;
    let outsider = http.token(&other, "zed").await;
    probe(&http, &alice).await.expect(200, "before suspension");

    // Suspension takes effect with the next request, for every token of the tenant.
    http.admin("POST", &format!("/admin/v1/tenants/{tenant}/suspend"), None)
        .await
        .expect(200, "suspend");
    for (who, t) in [("alice", &alice), ("bob", &bob)] {
        probe(&http, t)
            .await
            .expect_error(401, "tenant_suspended", who);
    }
    http.call(
        "POST",
        "/v1/token",
        None,
        Some(&json!({"app_id": app.0, "app_secret": app.1, "user_id": "alice"})),
    )
    .await
    .expect_error(401, "tenant_suspended", "token exchange while suspended");
    probe(&http, &outsider)
        .await
        .expect(200, "another tenant is unaffected");
    http.admin("POST", &format!("/admin/v1/tenants/{tenant}/resume"), None)
        .await
        .expect(200, "resume");
    probe(&http, &alice).await.expect(200, "after resume");

    // The declarative PUT suspends too.
    http.admin(
        "PUT",
        &format!("/admin/v1/tenants/{tenant}"),
        Some(json!({"name": "Suspended", "suspended": true})),
    )
    .await
    .expect(200, "put suspended");
    probe(&http, &alice)
        .await
        .expect_error(401, "tenant_suspended", "suspended by PUT");
    http.admin(
        "PUT",
        &format!("/admin/v1/tenants/{tenant}"),
        Some(json!({"name": "Active again"})),
    )
    .await
    .expect(200, "put active");
    probe(&http, &alice).await.expect(200, "active again");

    // Log out everywhere: the caller's tokens stop working, other users' do not.
    let alice2 = http.token(&app, "alice").await;
    http.call("POST", "/v1/me/revoke-tokens", Some(&alice), None)
        .await
        .expect(204, "revoke my tokens");
    for (name, t) in [("revoked token", &alice), ("second revoked token", &alice2)] {
        probe(&http, t)
            .await
            .expect_error(401, "token_revoked", name);
    }
    probe(&http, &bob).await.expect(200, "bob is unaffected");

    // The admin API revokes a user's tokens too.
    http.admin(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/users/bob/revoke-tokens"),
        None,
    )
    .await
    .expect(204, "admin revokes bob");
    probe(&http, &bob)
        .await
        .expect_error(401, "token_revoked", "bob after admin revocation");

    // A token issued after the revocation works. Revocation has one-second granularity (a
    // token issued within the same second as the revocation is refused too), so a fresh login
    // may need to be retried for up to about a second: wait for it with a deadline.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = http.token(&app, "alice").await;
        let r = probe(&http, &fresh).await;
        if r.status == 200 {
            break;
        }
        r.expect_error(
            401,
            "token_revoked",
            "a token issued right after revocation",
        );
        assert!(
            Instant::now() < end,
            "a token issued after the revocation never works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The admin actions are in the audit trail.
    let r = http
        .admin("GET", &format!("/admin/v1/audit?tenant_id={tenant}"), None)
        .await;
    let actions: Vec<&str> = r.expect(200, "audit")["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "tenant.create",
        "tenant.suspend",
        "tenant.resume",
        "tenant.update",
        "user.revoke_tokens",
    ] {
        assert!(actions.contains(&a), "audit has {a}: {actions:?}");
    }
    sa.proc.assert_no_panics();
}
