//! Every way an open can be wrong is refused with StreamOpenAck{accepted:false, STREAM} and a
//! reason, the socket is closed, and `/metrics` counts it under that reason.

use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{self, ProducerClaims, ViewerClaims, ViewerMode};
use tether_tests::relay::*;

/// Opens and expects a refusal naming `reason`; the relay must then close the socket.
async fn refused(url: &str, open_frame: Frame, reason: &str) {
    let (mut ws, ack) = open(url, open_frame).await;
    assert!(!ack.accepted, "expected a {reason} refusal");
    let err = ack.error.expect("refusal carries an error");
    assert_eq!(err.code, pb::ErrorCode::Stream as i32);
    assert_eq!(err.detail.get("reason").map(String::as_str), Some(reason), "{}", err.message);
    assert!(err.message.starts_with(reason), "message says why: {}", err.message);
    assert!(recv(&mut ws).await.is_none(), "socket closed after a refusal");
}

fn rejected(reason: &str) -> String {
    format!("tether_relay_opens_rejected_total{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn each_bad_open_is_refused_and_counted() {
    let relay = Relay::start(&["--handshake-timeout", "300ms"]).await;
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    let viewer = |claims: &ViewerClaims| open_msg("ch", pb::StreamRole::Client, viewer_token(claims), 0);

    // Forged signature: a token naming another agent, signed with a guessed secret.
    let forged = token::mint_producer(
        b"not-the-secret",
        &ProducerClaims { workspace_id: WS.into(), agent_id: AGENT.into(), exp: now_unix() + 60 },
    );
    refused(&url, open_msg("ch", pb::StreamRole::Agent, forged, 0), "bad_signature").await;

    let expired = ViewerClaims { exp: now_unix() - 10, ..viewer_claims("v", ViewerMode::View) };
    refused(&url, viewer(&expired), "expired").await;

    let other_ws =
        ViewerClaims { workspace_id: "someone-elses".into(), ..viewer_claims("v", ViewerMode::View) };
    refused(&url, viewer(&other_ws), "workspace_mismatch").await;

    let desktop_port =
        ViewerClaims { port: tether_proto::DESKTOP_PORT, ..viewer_claims("v", ViewerMode::Control) };
    refused(&url, viewer(&desktop_port), "port_mismatch").await;

    refused(&url, open_msg("ch", pb::StreamRole::Client, producer_token(), 0), "wrong_token_kind").await;
    let as_producer = viewer_token(&viewer_claims("v", ViewerMode::Control));
    refused(&url, open_msg("ch", pb::StreamRole::Agent, as_producer, 0), "wrong_token_kind").await;

    // The open names another channel than the URL.
    refused(&url, open_msg("other-ch", pb::StreamRole::Agent, producer_token(), 0), "query_mismatch").await;

    // A connection that never says StreamOpen.
    let mut silent = connect(&url).await;
    match recv(&mut silent).await {
        Some(Frame::OpenAck(ack)) => {
            assert!(!ack.accepted);
            assert_eq!(ack.error.unwrap().detail["reason"], "handshake_timeout");
        }
        other => panic!("expected a handshake-timeout refusal, got {other:?}"),
    }
    assert!(recv(&mut silent).await.is_none());

    for (reason, n) in [
        ("bad_signature", 1),
        ("expired", 1),
        ("workspace_mismatch", 1),
        ("port_mismatch", 1),
        ("wrong_token_kind", 2),
        ("query_mismatch", 1),
        ("handshake_timeout", 1),
    ] {
        assert_eq!(relay.metric(&rejected(reason)).await, n, "{reason}");
    }
    assert_eq!(relay.metric("tether_relay_handshake_timeouts_total").await, 1);
    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"viewer\"}").await, 0);
    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"agent\"}").await, 0);
}

#[tokio::test]
async fn an_older_lease_epoch_is_refused_once_a_newer_one_joined() {
    let relay = Relay::start(&[]).await;
    let newer = ViewerClaims { lease_epoch: 5, ..viewer_claims("v", ViewerMode::View) };
    let (_v, _) = viewer(&relay, "ch", &newer, 0).await;
    let older = ViewerClaims { lease_epoch: 4, ..viewer_claims("w", ViewerMode::View) };
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    refused(&url, open_msg("ch", pb::StreamRole::Client, viewer_token(&older), 0), "stale_epoch").await;
    assert_eq!(relay.metric(&rejected("stale_epoch")).await, 1);
}

#[tokio::test]
async fn connections_past_the_pending_handshake_cap_are_refused_before_the_upgrade() {
    let relay = Relay::start(&["--max-pending-opens", "2", "--handshake-timeout", "30s"]).await;
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    // Two peers that connect and never authenticate hold both places.
    let silent = [connect(&url).await, connect(&url).await];
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => {
            panic!("a third pending open must be refused with 503, got {:?}", other.map(|_| "an upgrade"))
        }
    }
    assert_eq!(relay.metric(&rejected("too_many_pending")).await, 1);
    // A place comes back as soon as a pending peer goes: an honest open then goes through.
    drop(silent);
    let mut accepted = None;
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            accepted = Some(ws);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut ws = accepted.expect("the places came back once the silent peers left");
    send(&mut ws, open_msg("ch", pb::StreamRole::Agent, producer_token(), 0)).await;
    match recv(&mut ws).await {
        Some(Frame::OpenAck(ack)) => assert!(ack.accepted, "{ack:?}"),
        other => panic!("expected the producer's OpenAck, got {other:?}"),
    }
}
