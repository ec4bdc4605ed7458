//! Tests of CCM: provisioning, password checks, states and fingerprints.
use super::*;

fn checker() -> PasswordChecker {
    PasswordChecker::new(2, 8)
}

#[tokio::test]
async fn right_password_is_accepted_and_activates_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap();
    let hash = hash_password("s3cret").unwrap();
    assert!(!hash.contains("s3cret"));
    let creds = vec![BasicCredentialSpec {
        username: "gw".into(),
        password_hash: hash.into(),
        applications: Some(vec!["*".into()]),
        endpoints: vec![],
    }];
    store.call(move |c| provision(c, &creds)).await.unwrap();
    assert_eq!(
        verify_basic(&store, &checker(), "gw", "wrong", None)
            .await
            .unwrap(),
        Verdict::BadCredentials
    );
    assert_eq!(
        verify_basic(&store, &checker(), "nobody", "s3cret", None)
            .await
            .unwrap(),
        Verdict::BadCredentials
    );
    assert_eq!(
        verify_basic(&store, &checker(), "gw", "s3cret", None)
            .await
            .unwrap(),
        Verdict::Accepted
    );
    let state: String = store
        .call(|c| Ok(c.query_row("SELECT state FROM credentials_basic", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(state, "active");
}

#[tokio::test]
async fn a_suspended_credential_is_not_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap();
    let creds = vec![BasicCredentialSpec {
        username: "gw".into(),
        password_hash: hash_password("pw").unwrap().into(),
        applications: Some(vec!["*".into()]),
        endpoints: vec![],
    }];
    store.call(move |c| provision(c, &creds)).await.unwrap();
    store
        .call(|c| Ok(c.execute("UPDATE credentials_basic SET state='suspended'", [])?))
        .await
        .unwrap();
    assert_eq!(
        verify_basic(&store, &checker(), "gw", "pw", None)
            .await
            .unwrap(),
        Verdict::NotAuthorized
    );
}

#[test]
fn state_transitions_follow_the_protocol() {
    use State::*;
    assert!(Inactive.can_become(Active));
    assert!(Active.can_become(Suspended));
    assert!(Suspended.can_become(Active));
    assert!(Active.can_become(Revoked));
    assert!(!Revoked.can_become(Active));
    assert!(!Revoked.can_become(Revoked));
    assert!(!Active.can_become(Inactive));
    assert!(!Suspended.can_become(Inactive));
}

#[tokio::test]
async fn x509_credentials_activate_on_first_use_and_refuse_when_suspended() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap();
    let fp = fingerprint_der(b"not really DER, any bytes hash");
    let colons: String = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let fp2 = colons.clone();
    assert!(store
        .call(move |c| create_x509(c, &fp2, "CN=dev"))
        .await
        .unwrap());
    assert_eq!(verify_x509(&store, &fp).await.unwrap(), Verdict::Accepted);
    let fp3 = fp.clone();
    let old = store
        .call(move |c| {
            set_state(c, Kind::X509, &fp3, State::Suspended)
                .map_err(|e| StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(old, State::Active);
    assert_eq!(
        verify_x509(&store, &fp).await.unwrap(),
        Verdict::NotAuthorized
    );
    assert_eq!(
        verify_x509(&store, &"0".repeat(64)).await.unwrap(),
        Verdict::NotAuthorized
    );
}

#[test]
fn a_plaintext_password_in_place_of_a_hash_is_refused() {
    assert!(check_hash("hunter2").is_err());
}
