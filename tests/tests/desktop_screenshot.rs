//! desktop_screenshot under a real Xvfb: the image is the display's size, shows what is on
//! the screen (a root colour painted by xsetroot, checked in the PNG and in a JPEG), honours a
//! target size, and always fits the server's max_payload (downscaled, native size reported).
//! Capabilities tell the truth about the display.

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::xvfb::{Xvfb, decode_png};
use tether_tests::{Agent, AgentOpts, Nats, pb};

fn on(xvfb: &Xvfb) -> AgentOpts {
    AgentOpts { env: vec![("DISPLAY".into(), xvfb.display.clone())], ..Default::default() }
}

async fn shot(agent: &Agent, request: pb::DesktopScreenshotRequest) -> pb::DesktopScreenshotResponse {
    match agent.call(Op::DesktopScreenshot(request)).await {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("screenshot failed: {other:?}\n{}", agent.log()),
    }
}

fn decode_jpeg(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder.decode().expect("a JPEG");
    let info = decoder.info().expect("JPEG info");
    assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
    (info.width.into(), info.height.into(), pixels)
}

fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let at = ((y * width + x) * 3) as usize;
    [rgb[at], rgb[at + 1], rgb[at + 2]]
}

fn near(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

#[tokio::test]
async fn a_screenshot_is_the_display_and_shows_its_colours_in_png_and_jpeg() {
    let xvfb = Xvfb::start(1024, 768);
    xvfb.paint_root("#c81e5a");
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, on(&xvfb)).await;
    let caps = agent.caps();
    assert!(caps.desktop, "a capturable display is claimed: {caps:?}");
    assert!(caps.desktop_unavailable_reason.is_empty());
    let display = caps.display.as_ref().expect("display in Hello");
    assert_eq!(
        (display.id.as_str(), display.width, display.height, display.r#virtual),
        (xvfb.display.as_str(), 1024, 768, false)
    );
    assert!(!caps.consented_screen_control, "no consent was given");
    assert!(caps.desktop_act);

    let png = shot(&agent, pb::DesktopScreenshotRequest::default()).await;
    assert_eq!(png.format, pb::ImageFormat::Png as i32);
    assert_eq!((png.width, png.height, png.native_width, png.native_height), (1024, 768, 1024, 768));
    let (w, h, rgb) = decode_png(&png.png);
    assert_eq!((w, h), (1024, 768));
    for (x, y) in [(0, 0), (512, 384), (1023, 767)] {
        assert_eq!(pixel(&rgb, w, x, y), [0xc8, 0x1e, 0x5a], "PNG is lossless at ({x}, {y})");
    }

    let jpeg = shot(
        &agent,
        pb::DesktopScreenshotRequest {
            format: pb::ImageFormat::Jpeg as i32,
            quality: 80,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(jpeg.format, pb::ImageFormat::Jpeg as i32);
    let (w, h, rgb) = decode_jpeg(&jpeg.png);
    assert_eq!((w, h), (1024, 768));
    assert!(
        near(pixel(&rgb, w, 512, 384), [0xc8, 0x1e, 0x5a], 12),
        "JPEG colour: {:?}",
        pixel(&rgb, w, 512, 384)
    );
    assert!(jpeg.png.len() < png.png.len() * 4, "a flat JPEG is small");

    // The screen changes; the next screenshot shows it.
    xvfb.paint_root("#10e040");
    let (w, _, rgb) = decode_png(&shot(&agent, Default::default()).await.png);
    assert_eq!(pixel(&rgb, w, 100, 100), [0x10, 0xe0, 0x40]);
}

#[tokio::test]
async fn a_target_size_scales_down_keeping_the_aspect_ratio() {
    let xvfb = Xvfb::start(1280, 800);
    xvfb.paint_root("#3366cc");
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, on(&xvfb)).await;
    let small =
        shot(&agent, pb::DesktopScreenshotRequest { max_width: 640, max_height: 640, ..Default::default() })
            .await;
    assert_eq!((small.width, small.height), (640, 400));
    assert_eq!((small.native_width, small.native_height), (1280, 800));
    let (w, h, rgb) = decode_png(&small.png);
    assert_eq!((w, h), (640, 400));
    assert_eq!(pixel(&rgb, w, 320, 200), [0x33, 0x66, 0xcc]);
    let big = shot(&agent, pb::DesktopScreenshotRequest { max_width: 4000, ..Default::default() }).await;
    assert_eq!((big.width, big.height), (1280, 800), "never upscaled");
}

#[tokio::test]
async fn a_small_max_payload_downscales_and_reports_the_native_size() {
    let xvfb = Xvfb::start(1280, 800);
    let nats = Nats::start_with("max_payload: 65536").await;
    let agent = Agent::start_with(&nats, on(&xvfb)).await;
    // A band of noise (it does not compress): a full-size PNG is several times max_payload.
    paint_noise(&xvfb, 60);
    let (size, reply) = agent.call_sized(Op::DesktopScreenshot(Default::default())).await;
    let shot = match reply {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("screenshot failed: {other:?}\n{}", agent.log()),
    };
    assert!(size <= 65536, "the reply ({size} bytes) fits max_payload");
    assert_eq!((shot.native_width, shot.native_height), (1280, 800));
    assert!(shot.width < 1280 && shot.height < 800, "downscaled to {}x{}", shot.width, shot.height);
    assert!(shot.height >= 320, "never below a 320 px edge");
    let (w, h, _) = decode_png(&shot.png);
    assert_eq!((w, h), (shot.width, shot.height));

    // A whole screen of noise cannot fit even at the smallest size: a typed error, not a
    // reply the server drops.
    paint_noise(&xvfb, 800);
    let (size, reply) = agent.call_sized(Op::DesktopScreenshot(Default::default())).await;
    let err = reply.expect_err("pure noise cannot fit 64 KiB");
    assert_eq!(tether_tests::error_code(&err), pb::ErrorCode::PayloadTooLarge, "{err:?}");
    assert!(err.detail.contains_key("encoded_bytes") && size <= 65536);
}

/// Fills the screen with pixels that do not compress, through the test's own X connection.
fn paint_noise(xvfb: &Xvfb, height: u16) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};
    use x11rb::wrapper::ConnectionExt as _;
    let conn = xvfb.connect();
    let screen = &conn.setup().roots[0];
    let (root, depth) = (screen.root, screen.root_depth);
    let gc = conn.generate_id().expect("test step");
    conn.create_gc(gc, root, &Default::default()).expect("test step");
    let mut seed = 0x9e37_79b9_u32;
    let rows = 20u16;
    for band in 0..(height / rows) {
        let data: Vec<u8> = (0..(1280 * rows as usize * 4))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        conn.put_image(ImageFormat::Z_PIXMAP, root, gc, 1280, rows, 0, (band * rows) as i16, 0, depth, &data)
            .expect("test step");
    }
    conn.sync().expect("test step");
}

#[tokio::test]
async fn without_a_display_the_desktop_is_unavailable_and_says_why() {
    let nats = Nats::start().await;
    let opts = AgentOpts { env: vec![("DISPLAY".into(), String::new())], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let caps = agent.caps();
    assert!(!caps.desktop);
    assert!(caps.desktop_unavailable_reason.contains("no display"), "{caps:?}");
    let err = agent.call(Op::DesktopScreenshot(Default::default())).await.unwrap_err();
    assert_eq!(tether_tests::error_code(&err), pb::ErrorCode::Unsupported, "{err:?}");
}
