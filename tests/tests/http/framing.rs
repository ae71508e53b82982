//! HTTP/1.1 details apps rely on, through the proxy: chunked request bodies with trailers,
//! `Expect: 100-continue`, `Connection: close`, and response trailers on HTTP/1.1 (asked for
//! with `TE: trailers`) and HTTP/2.

use mesh_tests::observe::pod_tool_json;

use super::support::*;

#[test]
fn chunked_bodies_expect_continue_close_and_trailers_pass_through() {
    let mesh = Versions::new(&["v1"], &web_service("http", &["v1"]));
    let connect = format!("{VIP}:80");

    // A chunked request body (11 bytes in two chunks) with a trailer, on a connection the
    // client asks to close: the app gets the whole body, the client its answer, then EOF.
    let chunked = "POST /echo HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n5\\r\\nhello\\r\\n6\\r\\n world\\r\\n0\\r\\nx-sum: 11\\r\\n\\r\\n";
    let sent = pod_tool_json(
        &mesh.client,
        &[
            "raw-send",
            "--connect",
            &connect,
            "--data",
            chunked,
            "--timeout-ms",
            "3000",
        ],
    );
    let received = sent["received"].as_str().unwrap_or_default();
    assert!(received.starts_with("HTTP/1.1 200"), "{sent}");
    assert!(received.contains("\"bytes\":11"), "{sent}");
    assert_eq!(
        sent["ended"], "eof",
        "Connection: close must end the connection: {sent}"
    );

    // Expect: 100-continue: the client waits for the go-ahead before its body; the body
    // then reaches the app whole.
    let expect = show(
        &mesh.client,
        &format!("http://{VIP}/echo"),
        &[
            "--method",
            "POST",
            "--body-bytes",
            "5000",
            "-H",
            "expect: 100-continue",
        ],
    );
    assert_eq!(expect.status, 200, "{expect:?}");
    assert!(expect.body.contains("\"bytes\":5000"), "{expect:?}");

    // Response trailers: over HTTP/2 always, over HTTP/1.1 when the client says it takes them.
    let url = format!("http://{VIP}/trailers");
    let h2 = show(&mesh.client, &url, &["--http2"]);
    assert!(h2.body.contains("trailer x-trailer: yes"), "{h2:?}");
    let h1 = show(&mesh.client, &url, &["-H", "te: trailers"]);
    assert!(h1.body.contains("trailer x-trailer: yes"), "{h1:?}");
}
