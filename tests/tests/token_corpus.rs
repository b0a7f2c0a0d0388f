//! A corpus of bad relay tokens (issue 20, item 8) against the real relay: forged, truncated,
//! re-padded, bit-flipped, expired, future-dated (an `exp` edited without re-signing), wrong
//! prefix, signed with the wrong secret, validly signed claims that are not claims, and claims
//! for another workspace, agent, port or channel. None is accepted, each refusal is counted in
//! `/metrics` (the rejections add up to the corpus), and view-only tokens that send input (a
//! spectator on a terminal, a "view" viewer on a desktop) reach nothing and are counted too.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{self, ProducerClaims, ViewerClaims, ViewerMode};
use tether_tests::relay::*;

const CH: &str = "ch";

/// One bad open: what it is, the role it claims, its token, and the reason it must be refused
/// with (None where the damage is random and any refusal will do).
struct Case {
    what: String,
    role: pb::StreamRole,
    token: String,
    reason: Option<&'static str>,
}

fn case(what: impl Into<String>, role: pb::StreamRole, token: String, reason: Option<&'static str>) -> Case {
    Case { what: what.into(), role, token, reason }
}

fn good_viewer() -> ViewerClaims {
    ViewerClaims {
        agent_id: Some(AGENT.into()),
        channel_id: Some(CH.into()),
        ..viewer_claims("v", ViewerMode::Control)
    }
}

fn good_producer() -> ProducerClaims {
    ProducerClaims { workspace_id: WS.into(), agent_id: AGENT.into(), exp: now_unix() + 3600 }
}

/// `token` with its claims replaced by `edit(claims JSON)`, keeping the old signature.
fn edited(token: &str, prefix: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let body = token.strip_prefix(prefix).expect("prefix");
    let (payload, signature) = body.rsplit_once('.').expect("signature");
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims");
    edit(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON"));
    format!("{prefix}{payload}.{signature}")
}

/// `payload` signed with the right secret: well signed, but not claims.
fn signed(prefix: &str, secret: &str, payload: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(payload.as_bytes());
    format!("{prefix}{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Damaged copies of one good token: truncations, re-paddings and bit flips.
fn damaged(what: &str, role: pb::StreamRole, good: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let dot = good.rfind('.').expect("a dot");
    for len in [0, 3, 4, 10, good.len() / 2, dot, dot + 1, good.len() - 1] {
        cases.push(case(format!("{what} truncated to {len}"), role, good[..len].to_owned(), None));
    }
    let (head, sig) = good.split_at(dot);
    for (how, token) in [
        ("payload re-padded", format!("{head}=={sig}")),
        ("signature re-padded", format!("{good}=")),
        ("signature re-padded twice", format!("{good}==")),
        ("standard base64 signature", good.replace('-', "+").replace('_', "/") + "+"),
    ] {
        cases.push(case(format!("{what} {how}"), role, token, None));
    }
    // Flips of one of the low six bits (ASCII stays ASCII) at 40 places spread over the token.
    for n in 0..40 {
        let at = n * good.len() / 40;
        let mut bytes = good.as_bytes().to_vec();
        bytes[at] ^= 1 << (n % 6);
        let token = String::from_utf8(bytes).expect("ASCII");
        if token != good {
            cases.push(case(format!("{what} bit flip at {at}"), role, token, None));
        }
    }
    cases
}

fn corpus() -> Vec<Case> {
    use pb::StreamRole::{Agent as P, Client as V};
    let viewer = viewer_token(&good_viewer());
    let producer = token::mint_producer(PRODUCER_SECRET.as_bytes(), &good_producer());
    let viewer_with = |c: ViewerClaims| viewer_token(&c);
    let producer_with = |c: ProducerClaims| token::mint_producer(PRODUCER_SECRET.as_bytes(), &c);
    let mut cases = vec![
        case("forged viewer", V, token::mint_viewer(b"guessed", &good_viewer()), Some("bad_signature")),
        case("forged producer", P, token::mint_producer(b"guessed", &good_producer()), Some("bad_signature")),
        case(
            "viewer signed with the producer secret",
            V,
            token::mint_viewer(PRODUCER_SECRET.as_bytes(), &good_viewer()),
            Some("bad_signature"),
        ),
        case(
            "producer signed with the viewer secret",
            P,
            token::mint_producer(VIEWER_SECRET.as_bytes(), &good_producer()),
            Some("bad_signature"),
        ),
        case(
            "expired viewer",
            V,
            viewer_with(ViewerClaims { exp: now_unix() - 1, ..good_viewer() }),
            Some("expired"),
        ),
        case(
            "viewer expiring now",
            V,
            viewer_with(ViewerClaims { exp: now_unix(), ..good_viewer() }),
            Some("expired"),
        ),
        case("viewer of 1970", V, viewer_with(ViewerClaims { exp: 0, ..good_viewer() }), Some("expired")),
        case(
            "expired producer",
            P,
            producer_with(ProducerClaims { exp: now_unix() - 1, ..good_producer() }),
            Some("expired"),
        ),
        case(
            "expired viewer future-dated without re-signing",
            V,
            edited(
                &viewer_with(ViewerClaims { exp: now_unix() - 60, ..good_viewer() }),
                token::VIEWER_PREFIX,
                |c| c["exp"] = (now_unix() + 10 * 365 * 86400).into(),
            ),
            Some("bad_signature"),
        ),
        case(
            "producer future-dated without re-signing",
            P,
            edited(&producer, token::PRODUCER_PREFIX, |c| c["exp"] = (now_unix() + 10 * 365 * 86400).into()),
            Some("bad_signature"),
        ),
        case(
            "viewer made read-write without re-signing",
            V,
            edited(
                &viewer_with(ViewerClaims { read_only: true, ..good_viewer() }),
                token::VIEWER_PREFIX,
                |c| {
                    c.as_object_mut().expect("claims object").remove("readOnly");
                },
            ),
            Some("bad_signature"),
        ),
        case("viewer token as producer", P, viewer.clone(), Some("wrong_token_kind")),
        case("producer token as viewer", V, producer.clone(), Some("wrong_token_kind")),
        case(
            "viewer with the producer prefix",
            V,
            viewer.replacen("ogs_", "ogr_", 1),
            Some("wrong_token_kind"),
        ),
        case("viewer without prefix", V, viewer["ogs_".len()..].to_owned(), Some("wrong_token_kind")),
        case("viewer upper-case prefix", V, viewer.replacen("ogs_", "OGS_", 1), Some("wrong_token_kind")),
        case("viewer as a bearer header", V, format!("Bearer {viewer}"), Some("wrong_token_kind")),
        case("empty viewer token", V, String::new(), Some("wrong_token_kind")),
        case("64 KiB viewer token", V, format!("ogs_{}", "A".repeat(64 << 10)), Some("malformed_token")),
        case(
            "signed non-JSON claims",
            V,
            signed("ogs_", VIEWER_SECRET, "bm90IGpzb24"),
            Some("malformed_token"),
        ),
        case(
            "signed claims with exp as text",
            V,
            signed(
                "ogs_",
                VIEWER_SECRET,
                &URL_SAFE_NO_PAD.encode(br#"{"workspaceId":"ws-e2e","exp":"soon"}"#),
            ),
            Some("malformed_token"),
        ),
        case(
            "viewer of another workspace",
            V,
            viewer_with(ViewerClaims { workspace_id: "other-ws".into(), ..good_viewer() }),
            Some("workspace_mismatch"),
        ),
        case(
            "viewer of another agent",
            V,
            viewer_with(ViewerClaims { agent_id: Some("other-agent".into()), ..good_viewer() }),
            Some("agent_mismatch"),
        ),
        case(
            "viewer of another port",
            V,
            viewer_with(ViewerClaims { port: tether_proto::DESKTOP_PORT, ..good_viewer() }),
            Some("port_mismatch"),
        ),
        case(
            "viewer of another channel",
            V,
            viewer_with(ViewerClaims { channel_id: Some("other-ch".into()), ..good_viewer() }),
            Some("channel_mismatch"),
        ),
        case(
            "producer of another workspace",
            P,
            producer_with(ProducerClaims { workspace_id: "other-ws".into(), ..good_producer() }),
            Some("workspace_mismatch"),
        ),
        case(
            "producer of another agent",
            P,
            producer_with(ProducerClaims { agent_id: "other-agent".into(), ..good_producer() }),
            Some("agent_mismatch"),
        ),
    ];
    cases.extend(damaged("viewer", V, &viewer));
    cases.extend(damaged("producer", P, &producer));
    cases
}

/// The rejection counters of `/metrics`, by reason.
async fn rejections(relay: &Relay) -> BTreeMap<String, u64> {
    let (_, body) = relay.get("/metrics").await;
    body.lines()
        .filter_map(|l| l.strip_prefix("tether_relay_opens_rejected_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"}")?;
            Some((reason.to_owned(), value.trim().parse().ok()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
async fn no_token_of_the_corpus_is_accepted_and_each_refusal_is_counted() {
    let relay = Relay::start(&[]).await;
    let url = relay.url(tether_proto::PTY_PORT, CH);
    let cases = corpus();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for c in &cases {
        let (mut ws, ack) = open(&url, open_msg(CH, c.role, c.token.clone(), 0)).await;
        assert!(!ack.accepted, "{}: accepted", c.what);
        let err = ack.error.unwrap_or_else(|| panic!("{}: a refusal without an error", c.what));
        assert_eq!(err.code, pb::ErrorCode::Stream as i32, "{}", c.what);
        let reason = err.detail.get("reason").cloned().unwrap_or_default();
        if let Some(expected) = c.reason {
            assert_eq!(reason, expected, "{}: {}", c.what, err.message);
        }
        assert!(
            !err.message.contains(&c.token) || c.token.len() < 8,
            "{}: the message repeats the token",
            c.what
        );
        assert!(recv(&mut ws).await.is_none(), "{}: the socket is closed after the refusal", c.what);
        *seen.entry(reason).or_insert(0) += 1;
    }
    eprintln!("token corpus: {} bad tokens refused, by reason {seen:?}", cases.len());
    assert_eq!(rejections(&relay).await, seen, "/metrics counts every refusal under its reason");
    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"viewer\"}").await, 0);
    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"agent\"}").await, 0);
}

/// A click at (`x`, 0) on `channel`.
fn click(channel: &str, x: i32) -> pb::DesktopInput {
    let pointer = pb::PointerEvent { x, action: pb::PointerAction::Click as i32, ..Default::default() };
    pb::DesktopInput { channel_id: channel.into(), event: Some(pb::desktop_input::Event::Pointer(pointer)) }
}

/// Waits (bounded) until the relay counted `n` input messages dropped for `reason`.
async fn dropped(relay: &Relay, reason: &str, n: u64) {
    let sample = format!("tether_relay_input_dropped_total{{reason=\"{reason}\"}}");
    for _ in 0..250 {
        if relay.metric(&sample).await >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric(&sample).await, n, "{sample}");
}

#[tokio::test]
async fn view_only_tokens_that_send_input_reach_nothing_and_are_counted() {
    let relay = Relay::start(&[]).await;
    // A terminal: a spectator types and resizes.
    let (mut agent, _) = producer(&relay, CH, 0).await;
    let spectator = ViewerClaims { read_only: true, ..good_viewer() };
    let (mut spec, _) = viewer(&relay, CH, &spectator, 0).await;
    send(&mut spec, data(CH, 0, Bytes::from_static(b"rm -rf ~\n"))).await;
    send(&mut spec, Frame::PtyResize(pb::PtyResize { cols: 1, rows: 1 })).await;
    send(&mut spec, Frame::DesktopInput(click(CH, 1))).await;
    dropped(&relay, "spectator", 3).await;

    // A desktop: a "view" viewer sends pointer and key input.
    let desktop = "desk";
    let url = relay.url(tether_proto::DESKTOP_PORT, desktop);
    let msg = |role, token| {
        open_msg_on(desktop, tether_proto::DESKTOP_PORT, pb::StreamKind::Desktop, role, token, 0)
    };
    let (mut screen, ack) = open(&url, msg(pb::StreamRole::Agent, producer_token())).await;
    assert!(ack.accepted, "{:?}", ack.error);
    let watcher = ViewerClaims {
        port: tether_proto::DESKTOP_PORT,
        channel_id: Some(desktop.into()),
        ..viewer_claims("w", ViewerMode::View)
    };
    let (mut watch, ack) = open(&url, msg(pb::StreamRole::Client, viewer_token(&watcher))).await;
    assert!(ack.accepted, "{:?}", ack.error);
    for seq in 1..=4 {
        send(&mut watch, Frame::DesktopInput(click(desktop, seq))).await;
    }
    dropped(&relay, "view_mode", 4).await;

    // What a permitted viewer sends is the first thing each producer gets: nothing slipped by.
    let (mut typist, _) = viewer(&relay, CH, &viewer_claims("typist", ViewerMode::View), 0).await;
    send(&mut typist, data(CH, 0, Bytes::from_static(b"echo hi\n"))).await;
    match recv(&mut agent).await {
        Some(Frame::Data(f)) => assert_eq!(f.data.as_ref(), b"echo hi\n"),
        other => panic!("the terminal's first input must be the typist's, got {other:?}"),
    }
    let driver = ViewerClaims { mode: ViewerMode::Control, ..watcher.clone() };
    let (mut drive, ack) = open(&url, msg(pb::StreamRole::Client, viewer_token(&driver))).await;
    assert!(ack.accepted, "{:?}", ack.error);
    send(&mut drive, Frame::DesktopInput(click(desktop, 9))).await;
    match recv(&mut screen).await {
        Some(Frame::DesktopInput(i)) => assert_eq!(i, click(desktop, 9)),
        other => panic!("the desktop's first input must be the driver's, got {other:?}"),
    }
}
