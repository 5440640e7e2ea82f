//! Handler tests through `tower::ServiceExt::oneshot` on the router, over a real SQLite file.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::api::{HostState, MacAddr};
use crate::control::BootDirective;
use crate::images::ImageStore;
use crate::store::SqliteStore;

struct Harness {
    dir: tempfile::TempDir,
    control: Control<SqliteStore>,
    router: Router,
    token: Secret,
}

const A: MacAddr = MacAddr([0x52, 0x54, 0, 0xaa, 0, 1]);
const B: MacAddr = MacAddr([0x52, 0x54, 0, 0xaa, 0, 2]);

fn inventory(mac: MacAddr, serial: &str) -> Value {
    json!({
        "cpu_model": "QEMU Virtual CPU", "cpu_count": 2, "memory_bytes": 2147483648u64,
        "disks": [{"name": "vda", "size_bytes": 10737418240u64, "serial": "D1", "rotational": false}],
        "nics": [{"name": "eth0", "mac": mac.to_string(), "link": true, "speed_mbps": 1000}],
        "vendor": "QEMU", "product": "Standard PC", "serial": serial, "boot_mode": "uefi",
    })
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).unwrap();
        let control = Control::new(store, ImageStore::new(dir.path().join("images")));
        let token = Secret::generate();
        let router = router(control.clone(), token.hash(), CancellationToken::new());
        Harness {
            dir,
            control,
            router,
            token,
        }
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.router.clone().oneshot(req).await.unwrap()
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let resp = self.raw(method, uri, auth, body).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, Some(self.token.expose()), body)
            .await
    }

    /// Imports a small image named `name` through the API.
    async fn import(&self, name: &str) {
        let src = self.dir.path().join(format!("build-{name}"));
        crate::images::tests::make_image_dir(&src, name, &[("disk.raw", b"0123456789")]);
        let (st, v) = self
            .admin(
                Method::POST,
                "/api/v1/images",
                Some(json!({"dir": src.to_str().unwrap()})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }

    async fn pxe(&self, mac: MacAddr) -> BootDirective {
        self.control.pxe_boot(mac).await.unwrap()
    }

    async fn ramdisk_secret(&self, mac: MacAddr) -> String {
        match self.pxe(mac).await {
            BootDirective::Ramdisk { imager_secret, .. } => imager_secret.expose().to_owned(),
            other => panic!("expected ramdisk, got {other:?}"),
        }
    }

    async fn state(&self, mac: MacAddr) -> Value {
        let (st, v) = self
            .admin(Method::GET, &format!("/api/v1/hosts/{mac}"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }
}

#[test]
fn openapi_document_is_current() {
    expectorate::assert_contents("openapi.json", &openapi_json_string());
}

#[tokio::test]
async fn operator_routes_need_the_admin_token() {
    let h = Harness::new();
    let secret = h.ramdisk_secret(A).await;
    for (method, uri) in [
        (Method::GET, "/api/v1/hosts"),
        (Method::GET, "/api/v1/hosts/x"),
        (Method::DELETE, "/api/v1/hosts/x"),
        (Method::POST, "/api/v1/hosts/x/retry"),
        (Method::GET, "/api/v1/images"),
        (Method::GET, "/api/v1/rules"),
        (Method::DELETE, "/api/v1/rules/1"),
        (Method::GET, "/api/v1/events"),
    ] {
        for auth in [None, Some("wrong"), Some(secret.as_str())] {
            let (st, v) = h.call(method.clone(), uri, auth, None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {uri} {auth:?}");
            assert_eq!(v["error"], "unauthorized");
        }
    }
    let (st, _) = h.admin(Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["info"]["title"], "provisioner");
}

#[tokio::test]
async fn machine_routes_need_the_hosts_own_secret() {
    let h = Harness::new();
    let sa = h.ramdisk_secret(A).await;
    let sb = h.ramdisk_secret(B).await;
    for auth in [None, Some("wrong"), Some(h.token.expose())] {
        let (st, _) = h
            .call(Method::GET, "/api/v1/machine/plan", auth, None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?}");
        let (st, _) = h
            .call(
                Method::POST,
                "/api/v1/machine/inventory",
                auth,
                Some(inventory(A, "S1")),
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    // A's secret only ever acts on A, whatever the body says.
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/machine/inventory",
            Some(&sa),
            Some(inventory(B, "S2")),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(h.state(A).await["state"]["state"], "ready");
    assert_eq!(h.state(B).await["state"]["state"], "discovered");
    assert!(h.state(B).await["inventory"].is_null());
    // A new PXE boot rotates the secret: the old one stops working.
    let sa2 = h.ramdisk_secret(A).await;
    let (st, _) = h
        .call(Method::GET, "/api/v1/machine/plan", Some(&sa), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = h
        .call(Method::GET, "/api/v1/machine/plan", Some(&sa2), None)
        .await;
    assert_eq!((st, v["action"].as_str()), (StatusCode::OK, Some("wait")));
    let (st, v) = h
        .call(Method::GET, "/api/v1/machine/plan", Some(&sb), None)
        .await;
    assert_eq!(
        (st, v["action"].as_str()),
        (StatusCode::OK, Some("inventory"))
    );
}

#[tokio::test]
async fn zero_touch_flow_through_the_api() {
    let h = Harness::new();
    h.import("golden").await;
    let (st, rule) = h
        .admin(
            Method::POST,
            "/api/v1/rules",
            Some(json!({"match": {"vendor": "qemu"}, "image": "golden", "hostname": "node-{serial}"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{rule}");

    let secret = h.ramdisk_secret(A).await;
    let m = |method, uri: &'static str, body| {
        let s = secret.clone();
        let h = &h;
        async move { h.call(method, uri, Some(&s), body).await }
    };
    assert_eq!(
        m(Method::GET, "/api/v1/machine/plan", None).await.1["action"],
        "inventory"
    );
    let (st, v) = m(
        Method::POST,
        "/api/v1/machine/inventory",
        Some(inventory(A, "SN1")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"]["state"], "deploying");
    assert_eq!(v["hostname"], "node-sn1");

    let (_, plan) = m(Method::GET, "/api/v1/machine/plan", None).await;
    assert_eq!(plan["action"], "deploy");
    assert_eq!(plan["plan"]["disk"], "vda");
    assert_eq!(plan["artifact_base"], "/images/golden/");
    assert_eq!(plan["artifacts"][0]["path"], "disk.raw");
    let enrol_secret = plan["enrol_secret"].as_str().unwrap().to_owned();

    // The artifact is served, with range requests.
    let resp = h
        .raw(Method::GET, "/images/golden/disk.raw", None, None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .router
        .clone()
        .oneshot(
            Request::get("/images/golden/disk.raw")
                .header("range", "bytes=4-")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let body = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
    assert_eq!(&body[..], b"456789");

    // Done before verified is refused: an unverified write never completes.
    let (st, v) = m(
        Method::POST,
        "/api/v1/machine/result",
        Some(json!({"result": "done"})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let prog = json!({"phase": "writing", "progress": {"done": 5, "total": 10}});
    let (st, v) = m(Method::POST, "/api/v1/machine/progress", Some(prog)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"]["progress"]["done"], 5);
    for r in ["verified", "done"] {
        let (st, v) = m(
            Method::POST,
            "/api/v1/machine/result",
            Some(json!({"result": r})),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{r}: {v}");
    }
    assert_eq!(h.state(A).await["state"]["phase"], "rebooting");
    assert_eq!(
        m(Method::GET, "/api/v1/machine/plan", None).await.1["action"],
        "boot_local"
    );
    // Rebooting into its new disk: a PXE boot is told to boot locally.
    assert!(matches!(h.pxe(A).await, BootDirective::LocalDisk { .. }));

    // The imager secret cannot enrol; the enrolment secret can, once.
    let enrol = json!({"hostname": "node-sn1", "machine_id": "0123456789abcdef0123456789abcdef"});
    let (st, _) = h
        .call(
            Method::POST,
            "/api/v1/machine/enrol",
            Some(&secret),
            Some(enrol.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/machine/enrol",
            Some(&enrol_secret),
            Some(enrol.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(h.state(A).await["state"]["state"], "deployed");
    let (st, _) = h
        .call(
            Method::POST,
            "/api/v1/machine/enrol",
            Some(&enrol_secret),
            Some(enrol),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Deployment revoked the imager secret too.
    assert_eq!(
        m(Method::GET, "/api/v1/machine/plan", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Deployed: local disk, until a redeploy is asked.
    assert!(matches!(h.pxe(A).await, BootDirective::LocalDisk { .. }));
    let (st, v) = h
        .admin(
            Method::POST,
            &format!("/api/v1/hosts/{A}/redeploy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"]["phase"], "pending");
    assert!(matches!(h.pxe(A).await, BootDirective::Ramdisk { .. }));

    // The event log tells the story.
    let (_, evs) = h.admin(Method::GET, "/api/v1/events", None).await;
    let names: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "discovered",
            "pxe_boot",
            "inventory_posted",
            "rule_matched",
            "progress",
            "verified",
            "imaging_done",
            "pxe_boot",
            "enrolled",
            "pxe_boot",
            "redeploy_requested",
            "pxe_boot",
        ]
    );
}

#[tokio::test]
async fn no_rule_waits_in_ready_then_operator_deploys_fails_and_retries() {
    let h = Harness::new();
    h.import("golden").await;
    let secret = h.ramdisk_secret(A).await;
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/machine/inventory",
            Some(&secret),
            Some(inventory(A, "SN9")),
        )
        .await;
    assert_eq!(
        (st, v["state"]["state"].as_str()),
        (StatusCode::OK, Some("ready"))
    );

    let uri = format!("/api/v1/hosts/{A}/deploy");
    let (st, v) = h
        .admin(Method::POST, &uri, Some(json!({"image": "nope"})))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"], "not_found");
    let (st, v) = h
        .admin(
            Method::POST,
            &uri,
            Some(json!({"image": "golden", "disk": "sdz"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = h
        .admin(
            Method::POST,
            &uri,
            Some(json!({"image": "golden", "hostname": "web-{serial}"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["hostname"], "web-sn9");
    // Deploying twice conflicts.
    let (st, v) = h
        .admin(Method::POST, &uri, Some(json!({"image": "golden"})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(
        v["message"].as_str().unwrap().contains("deploy_requested"),
        "{v}"
    );

    let fail =
        json!({"result": "failed", "stage": "verify", "reason": "sha256 mismatch at offset 0"});
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/machine/result",
            Some(&secret),
            Some(fail),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let s = h.state(A).await;
    assert_eq!(s["state"]["state"], "failed");
    assert_eq!(s["state"]["stage"], "verify");
    assert_eq!(s["state"]["reason"], "sha256 mismatch at offset 0");

    let (st, v) = h
        .admin(Method::POST, "/api/v1/hosts/web-sn9/retry", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"]["state"], "deploying");
    let (st, _) = h
        .admin(Method::POST, "/api/v1/hosts/web-sn9/retry", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    let (st, _) = h
        .admin(Method::DELETE, &format!("/api/v1/hosts/{A}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = h
        .admin(Method::GET, &format!("/api/v1/hosts/{A}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = h
        .call(Method::GET, "/api/v1/machine/plan", Some(&secret), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn images_and_rules_validation() {
    let h = Harness::new();
    h.import("golden").await;
    let src = h.dir.path().join("build-golden");
    let (st, v) = h
        .admin(
            Method::POST,
            "/api/v1/images",
            Some(json!({"dir": src.to_str().unwrap()})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // A corrupted artifact is refused with the checksum in the message.
    std::fs::write(src.join("disk.raw"), b"0123456780").unwrap();
    let (st, v) = h
        .admin(
            Method::POST,
            "/api/v1/images",
            Some(json!({"dir": src.to_str().unwrap(), "name": "other"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("sha256"), "{v}");
    let (_, list) = h.admin(Method::GET, "/api/v1/images", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (st, v) = h
        .admin(
            Method::POST,
            "/api/v1/rules",
            Some(json!({"image": "golden", "hostname": "{cpu}"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) = h
        .admin(
            Method::POST,
            "/api/v1/rules",
            Some(json!({"image": "gone", "hostname": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = h
        .admin(
            Method::POST,
            "/api/v1/rules",
            Some(json!({"image": "golden", "hostname": "x", "bogus": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "bad_request");
    let (st, r) = h
        .admin(
            Method::POST,
            "/api/v1/rules",
            Some(json!({"match": {"min_memory_bytes": 1}, "image": "golden", "hostname": "n-{mac}", "disk": {"name": "vda"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let uri = format!("/api/v1/rules/{}", r["id"]);
    assert_eq!(
        h.admin(Method::DELETE, &uri, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.admin(Method::DELETE, &uri, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.admin(Method::DELETE, "/api/v1/rules/x", None).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn internal_errors_are_generic_with_a_request_id() {
    let h = Harness::new();
    // Break the database underneath the store.
    let conn = rusqlite::Connection::open(h.dir.path().join("inventory.db")).unwrap();
    conn.execute_batch("DROP TABLE rules").unwrap();
    let (st, v) = h.admin(Method::GET, "/api/v1/rules", None).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"], "internal");
    assert_eq!(v["message"], "internal server error");
    assert!(
        v["request_id"].as_str().is_some_and(|s| s.len() == 36),
        "{v}"
    );
}

#[tokio::test]
async fn events_follow_streams_json_lines() {
    let h = Harness::new();
    h.pxe(A).await;
    let resp = h
        .raw(
            Method::GET,
            "/api/v1/events?follow=true",
            Some(h.token.expose()),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    let mut pxed_b = false;
    while lines.len() < 4 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .expect("event within 10 s")
            .expect("stream open")
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            lines.push(serde_json::from_slice::<Event>(&line).unwrap());
        }
        if lines.len() >= 2 && !pxed_b {
            pxed_b = true;
            h.pxe(B).await;
        }
    }
    let got: Vec<(MacAddr, &str)> = lines.iter().map(|e| (e.mac, e.event.as_str())).collect();
    assert_eq!(
        got,
        [
            (A, "discovered"),
            (A, "pxe_boot"),
            (B, "discovered"),
            (B, "pxe_boot")
        ]
    );
    assert!(lines.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(lines[3].state, Some(HostState::Discovered));
}
