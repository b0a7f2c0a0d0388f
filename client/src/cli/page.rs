//! The relay's viewer page for a channel (`tetherctl shell --print-url`, `tetherctl desktop
//! --print-url`): `http(s)://relay/view#token=...&ws=...&agent=...&port=...&channel=...`. Made
//! from the relay's `/stream` URL, the one the agent and `tetherctl shell` dial. Everything the
//! page needs goes after `#`, which browsers never send: the token reaches no server log.

use anyhow::{Context, bail};
use tether_client::pb;

/// The `/view` URL beside the relay's `/stream` URL `relay_url` (ws, wss, http or https) for
/// `channel`, with `token` in the fragment.
pub fn page_url(relay_url: &str, channel: &pb::StreamChannel, token: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(relay_url).with_context(|| format!("the relay URL {relay_url:?}"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("the relay URL {relay_url:?} has scheme {other:?}; expected ws, wss, http or https"),
    };
    // Both are special schemes, so the change is always accepted.
    let _ = url.set_scheme(scheme);
    let base = url.path().trim_end_matches('/').trim_end_matches("/stream").to_owned();
    url.set_path(&format!("{base}/view"));
    url.set_query(None);
    let fragment = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("ws", &channel.workspace_id)
        .append_pair("agent", &channel.agent_id)
        .append_pair("port", &channel.port.to_string())
        .append_pair("channel", &channel.channel_id)
        .finish();
    url.set_fragment(Some(&fragment));
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> pb::StreamChannel {
        pb::StreamChannel {
            channel_id: "pty-1".into(),
            workspace_id: "ws 1".into(),
            agent_id: "a".into(),
            kind: pb::StreamKind::Pty as i32,
            port: 7681,
        }
    }

    #[test]
    fn the_page_sits_beside_the_stream_route_with_everything_in_the_fragment() {
        let url = page_url("ws://127.0.0.1:8443/stream", &channel(), "ogs_a.b").unwrap();
        assert_eq!(url, "http://127.0.0.1:8443/view#token=ogs_a.b&ws=ws+1&agent=a&port=7681&channel=pty-1");
        let url = page_url("wss://relay.example/tether/stream?x=1", &channel(), "t").unwrap();
        assert!(url.starts_with("https://relay.example/tether/view#token=t&"), "{url}");
        let url = page_url("https://relay.example", &channel(), "t").unwrap();
        assert!(url.starts_with("https://relay.example/view#"), "{url}");
    }

    #[test]
    fn other_schemes_are_refused() {
        let err = page_url("nats://relay:4222", &channel(), "t").unwrap_err().to_string();
        assert!(err.contains("nats"), "{err}");
        assert!(page_url("not a url", &channel(), "t").is_err());
    }
}
