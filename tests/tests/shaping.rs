//! Replies always fit the server's max_payload: listings stop and say so; anything else that
//! cannot be shaped is PAYLOAD_TOO_LARGE, never a silent drop.

use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, Nats, pb};

const SMALL: usize = 64 * 1024;

#[tokio::test]
async fn a_listing_too_big_for_one_reply_is_cut_sorted_and_marked_truncated() {
    let nats = Nats::start_with(&format!("max_payload: {SMALL}")).await;
    let agent = Agent::start(&nats).await;
    assert_eq!(agent.hello.capabilities.as_ref().unwrap().max_payload, SMALL as u64);
    for i in 0..3000 {
        std::fs::write(agent.root.join(format!("file-with-a-long-name-{i:05}.txt")), b"x").unwrap();
    }
    let req = pb::ControlRequest {
        request_id: "list".into(),
        op: Some(Op::FsList(pb::FsListRequest { path: "/workspace".into(), ..Default::default() })),
        ..Default::default()
    };
    let raw = agent.request_raw(req.encode_to_vec()).await;
    assert!(raw.encoded_len() <= SMALL, "reply of {} bytes", raw.encoded_len());
    let Some(Reply::FsList(list)) = raw.result else { panic!("listing expected: {:?}", raw.error) };
    assert!(list.truncated);
    assert!(list.entries.len() > 100 && list.entries.len() < 3000, "{} entries", list.entries.len());
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the first entries in path order");
    assert_eq!(names[0], "file-with-a-long-name-00000.txt");

    let capped = Op::FsList(pb::FsListRequest { path: String::new(), max_entries: 10, ..Default::default() });
    let Ok(Reply::FsList(list)) = agent.call(capped).await else { panic!("listing expected") };
    assert_eq!(list.entries.len(), 10);
    assert!(list.truncated);
}

#[tokio::test]
async fn the_metrics_op_returns_a_real_sample() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let Ok(Reply::Metrics(m)) = agent.call(Op::Metrics(pb::MetricsRequest {})).await else {
        panic!("metrics expected")
    };
    assert!(m.mem_total_bytes > m.mem_used_bytes && m.mem_used_bytes > 0);
    assert!(m.disk_total_bytes >= m.disk_used_bytes && m.disk_total_bytes > 0);
    assert!((0.0..=100.0).contains(&m.cpu_percent));
    assert!(m.load1 >= 0.0 && m.sampled_at_ms > 0);
}
