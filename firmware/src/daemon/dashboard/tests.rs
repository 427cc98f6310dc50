//! Dashboard tests on a real listener (127.0.0.1:0) with a tiny std::net HTTP/1.1 client.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const TOKEN: &str = "s3cret-token-for-tests";

fn study(id: &str, received: u64) -> StudyView {
    StudyView {
        id: id.into(),
        received_unix_ms: received,
        done_unix_ms: Some(received + 900),
        state: StudyState::Done,
        patient_name: Some("DOE^JANE".into()),
        patient_id: Some("PID-0042".into()),
        accession: Some("ACC-7".into()),
        body_part: Some("KNEE".into()),
        source: "dicom:DRSTATION".into(),
        flag: Some("suspected primary bone tumour".into()),
        pbt: Some(true),
        probability: Some(0.875),
        threshold: Some(0.5),
        bundle: Some("tirp-ensemble 1.2.0".into()),
        backend: Some("cpu".into()),
        latency_ms: Some(900.0),
        error: None,
        has_heatmap: true,
    }
}

fn status() -> StatusView {
    let mut extra = serde_json::Map::new();
    extra.insert("dicom_associations".into(), 3.into());
    StatusView {
        device_id: "dev-01".into(),
        board: "jetson-orin-nano".into(),
        firmware_version: "0.6.0".into(),
        bundle: Some("tirp-ensemble 1.2.0".into()),
        slot: Some("a".into()),
        backend: Some("cpu".into()),
        dicom: Some("TIRPEDGE@0.0.0.0:11112".into()),
        queue_depth: 2,
        outbox_depth: 1,
        uptime_s: 3723,
        extra,
    }
}

struct Server {
    dash: Arc<Dashboard>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn start(history: usize) -> Server {
        let dash = Arc::new(Dashboard::new(history, Box::new(status)));
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = DashboardConfig::new("127.0.0.1:0".parse().unwrap(), TOKEN);
        let (addr, handle) = serve(dash.clone(), cfg, stop.clone()).unwrap();
        Server {
            dash,
            addr,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    (status, headers)
}

/// GET `path` with extra request header lines; `Connection: close`, reads to the end.
fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut raw = Vec::new();
    r.read_to_end(&mut raw).unwrap();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(&raw) } else { raw };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_line = std::str::from_utf8(&raw[..nl]).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

#[test]
fn every_route_needs_the_token() {
    let srv = Server::start(10);
    srv.dash.publish(
        study("ab01", 1000),
        Some(Arc::new(vec![0x89, b'P', b'N', b'G'])),
    );
    let routes = [
        "/",
        "/status",
        "/studies/ab01",
        "/app.js",
        "/app.css",
        "/api/studies",
        "/api/studies/ab01",
        "/api/studies/ab01/heatmap.png",
        "/api/status",
        "/api/events",
        "/no/such/route",
    ];
    let wrong_cookie = format!("Cookie: {SESSION_COOKIE}=deadbeef");
    let token_as_cookie = format!("Cookie: {SESSION_COOKIE}={TOKEN}");
    let bad: [&[&str]; 6] = [
        &[],
        &["Authorization: Bearer wrong"],
        &["Authorization: Basic czNjcmV0LXRva2VuLWZvci10ZXN0cw=="],
        &[&wrong_cookie],
        &[&token_as_cookie],
        &["Authorization: Bearer s3cret-token-for-test"],
    ];
    for route in routes {
        for headers in bad {
            let r = get(srv.addr, route, headers);
            assert_eq!(r.status, 401, "{route} {headers:?}");
            let body = r.text();
            assert!(body.starts_with("401 Unauthorized"), "{body}");
            assert!(
                !body.contains("DOE") && !body.contains("PID-0042"),
                "{body}"
            );
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert!(r.header("set-cookie").is_none());
        }
        let r = get(srv.addr, &format!("{route}?token=nope"), &[]);
        assert_eq!(r.status, 401, "{route}?token=nope");
        assert!(r.header("set-cookie").is_none());
    }
    // The right token by header.
    for route in [
        "/",
        "/status",
        "/studies/ab01",
        "/app.js",
        "/app.css",
        "/api/studies",
    ] {
        let r = get(srv.addr, route, &[&bearer()]);
        assert_eq!(r.status, 200, "{route}");
    }
    assert_eq!(get(srv.addr, "/no/such/route", &[&bearer()]).status, 404);
}

#[test]
fn query_token_sets_a_strict_httponly_cookie_that_works() {
    let srv = Server::start(10);
    let r = get(srv.addr, &format!("/?token={TOKEN}"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("NOT FOR DIAGNOSTIC USE"));
    let cookie = r.header("set-cookie").expect("a session cookie").to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(
        !cookie.contains(TOKEN),
        "the cookie must not carry the token itself"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = get(
        srv.addr,
        "/api/studies",
        &[&format!("Cookie: other=1; {pair}")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!([]));
    // A header-authorised request sets no cookie.
    assert!(
        get(srv.addr, "/", &[&bearer()])
            .header("set-cookie")
            .is_none()
    );
}

#[test]
fn security_headers_on_pages_and_api() {
    let srv = Server::start(10);
    for (route, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/status", "text/html; charset=utf-8"),
        ("/studies/x", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/api/studies", "application/json"),
        ("/api/status", "application/json"),
    ] {
        let r = get(srv.addr, route, &[&bearer()]);
        assert_eq!(r.status, 200, "{route}");
        assert_eq!(r.header("content-type"), Some(ctype), "{route}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{route}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{route}"
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        if ctype.starts_with("text/html") {
            let t = r.text();
            assert!(t.contains("NOT FOR DIAGNOSTIC USE"), "{route}");
            // No inline script or style: everything comes from /app.js and /app.css.
            assert!(!t.contains("<script>") && !t.contains("<style") && !t.contains("style="));
            assert!(
                !t.contains("http://") && !t.contains("https://"),
                "no external assets"
            );
        }
    }
}

#[test]
fn publish_replaces_by_id_and_keeps_only_history() {
    let dash = Dashboard::new(3, Box::new(status));
    let mut q = study("aa", 100);
    q.state = StudyState::Queued;
    q.flag = None;
    dash.publish(q, None);
    dash.publish(study("bb", 200), None);
    assert_eq!(dash.studies().len(), 2);
    // Replacing keeps one entry for the id and its new content.
    dash.publish(study("aa", 100), Some(Arc::new(vec![1, 2, 3])));
    let v = dash.studies();
    assert_eq!(
        v.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["bb", "aa"]
    );
    assert_eq!(v[1].state, StudyState::Done);
    assert_eq!(dash.heatmap("aa").unwrap().as_slice(), &[1, 2, 3]);
    // Newest first by received time, whatever the publication order.
    dash.publish(study("cc", 150), None);
    dash.publish(study("dd", 300), None);
    let ids: Vec<String> = dash.studies().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["dd", "bb", "cc"], "the oldest (aa) is dropped");
    assert!(dash.study("aa").is_none() && dash.heatmap("aa").is_none());
    // Ties of received time: newest publication first.
    dash.publish(study("ee", 300), None);
    let ids: Vec<String> = dash.studies().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["ee", "dd", "bb"]);
    // A replacement without a heat-map drops the old one.
    dash.publish(study("ee", 300), Some(Arc::new(vec![9])));
    dash.publish(study("ee", 300), None);
    assert!(dash.heatmap("ee").is_none());
    assert!(
        !dash.study("ee").unwrap().has_heatmap,
        "has_heatmap follows the PNG"
    );
    dash.publish(study("ee", 300), Some(Arc::new(vec![9])));
    assert!(dash.study("ee").unwrap().has_heatmap);
    assert_eq!(dash.studies().len(), 3);
}

#[test]
fn api_lists_newest_first_and_serves_one_study_and_its_heatmap() {
    let srv = Server::start(5);
    for i in 0..8u64 {
        let png = Arc::new(vec![0x89, b'P', b'N', b'G', i as u8]);
        srv.dash
            .publish(study(&format!("{i:02x}"), 1000 + i), Some(png));
    }
    srv.dash.publish(study("03", 1003), None); // replaced, now without a heat-map
    let r = get(srv.addr, "/api/studies", &[&bearer()]);
    assert_eq!(r.status, 200);
    let v = r.json();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["07", "06", "05", "04", "03"]);

    let r = get(srv.addr, "/api/studies/06", &[&bearer()]);
    assert_eq!(r.status, 200);
    let back: StudyView = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(back, study("06", 1006));

    let r = get(srv.addr, "/api/studies/06/heatmap.png", &[&bearer()]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.body, [0x89, b'P', b'N', b'G', 6]);

    let r = get(srv.addr, "/api/studies/03/heatmap.png", &[&bearer()]);
    assert_eq!(r.status, 404);
    let r = get(srv.addr, "/api/studies/nope", &[&bearer()]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({"error": "no such study"}));
}

#[test]
fn study_json_shape() {
    let mut s = study("c0ffee", 1_700_000_000_000);
    s.state = StudyState::Failed;
    s.error = Some("decode: unsupported transfer syntax".into());
    let j = serde_json::to_value(&s).unwrap();
    let keys: Vec<&str> = j.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want = vec![
        "id",
        "received_unix_ms",
        "done_unix_ms",
        "state",
        "patient_name",
        "patient_id",
        "accession",
        "body_part",
        "source",
        "flag",
        "pbt",
        "probability",
        "threshold",
        "bundle",
        "backend",
        "latency_ms",
        "error",
        "has_heatmap",
    ];
    let mut got = keys.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["probability"], 0.875);
    assert_eq!(j["received_unix_ms"], 1_700_000_000_000u64);
    for (st, name) in [
        (StudyState::Queued, "queued"),
        (StudyState::Done, "done"),
        (StudyState::Failed, "failed"),
    ] {
        assert_eq!(serde_json::to_value(st).unwrap(), name);
    }
    // Round trip.
    assert_eq!(serde_json::from_value::<StudyView>(j).unwrap(), s);
}

#[test]
fn status_json_shape() {
    let srv = Server::start(10);
    srv.dash.publish(study("01", 1), None);
    let r = get(srv.addr, "/api/status", &[&bearer()]);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["device_id"], "dev-01");
    assert_eq!(j["board"], "jetson-orin-nano");
    assert_eq!(j["firmware_version"], "0.6.0");
    assert_eq!(j["bundle"], "tirp-ensemble 1.2.0");
    assert_eq!(j["slot"], "a");
    assert_eq!(j["backend"], "cpu");
    assert_eq!(j["dicom"], "TIRPEDGE@0.0.0.0:11112");
    assert_eq!(j["queue_depth"], 2);
    assert_eq!(j["outbox_depth"], 1);
    assert_eq!(j["uptime_s"], 3723);
    assert_eq!(j["extra"]["dicom_associations"], 3);
    assert_eq!(
        j["latency"],
        serde_json::json!({"p50_ms": 900.0, "p95_ms": 900.0, "max_ms": 900.0, "n": 1})
    );
    assert_eq!(j["studies_kept"], 1);
    assert_eq!(j["live_clients"], 0);
}

#[test]
fn latency_percentiles_over_done_studies() {
    let dash = Dashboard::new(500, Box::new(status));
    assert_eq!(dash.latency(), LatencySummary::default());
    // 1..=100 ms, published in a scrambled order.
    for i in 0..100u64 {
        let l = (i * 37) % 100 + 1;
        let mut s = study(&format!("lat{i}"), i);
        s.latency_ms = Some(l as f64);
        dash.publish(s, None);
    }
    // Not counted: queued, failed, no latency, non-finite.
    let mut q = study("q", 1000);
    q.state = StudyState::Queued;
    q.latency_ms = None;
    dash.publish(q, None);
    let mut f = study("f", 1001);
    f.state = StudyState::Failed;
    f.latency_ms = Some(1e9);
    dash.publish(f, None);
    let mut n = study("n", 1002);
    n.latency_ms = Some(f64::NAN);
    dash.publish(n, None);
    let l = dash.latency();
    assert_eq!(
        l,
        LatencySummary {
            p50_ms: Some(50.0),
            p95_ms: Some(95.0),
            max_ms: Some(100.0),
            n: 100
        }
    );
    // Small n: nearest rank.
    let dash = Dashboard::new(10, Box::new(status));
    for (i, l) in [120.0, 80.0, 400.0].into_iter().enumerate() {
        let mut s = study(&i.to_string(), i as u64);
        s.latency_ms = Some(l);
        dash.publish(s, None);
    }
    let l = dash.latency();
    assert_eq!(
        (l.p50_ms, l.p95_ms, l.max_ms, l.n),
        (Some(120.0), Some(400.0), Some(400.0), 3)
    );
}

/// Opens `/api/events` and returns the reader positioned after the response head.
fn open_events(addr: SocketAddr) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{}\r\n\r\n",
        bearer()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    (status, headers, r)
}

/// Reads SSE lines (through chunked framing, which is just extra lines here) until an
/// event named `name`, returning its data.
fn next_event(r: &mut BufReader<TcpStream>, name: &str, deadline: Instant) -> Option<String> {
    let mut event = None;
    let mut data = String::new();
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("{e}"),
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = l.strip_prefix("event: ") {
            event = Some(e.to_owned());
        } else if let Some(d) = l.strip_prefix("data: ") {
            data.push_str(d);
        } else if l.is_empty() && event.is_some() {
            if event.as_deref() == Some(name) {
                return Some(data);
            }
            event = None;
            data.clear();
        }
    }
    None
}

#[test]
fn sse_delivers_a_published_study_within_a_second() {
    let srv = Server::start(10);
    let (status, headers, mut r) = open_events(srv.addr);
    assert_eq!(status, 200);
    let ctype = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str());
    assert_eq!(ctype, Some("text/event-stream"));
    assert_eq!(srv.dash.live_clients(), 1);
    let mut s = study("5e5e", 42);
    s.has_heatmap = false; // published without one
    let t0 = Instant::now();
    srv.dash.publish(s.clone(), None);
    let data = next_event(&mut r, "study", t0 + Duration::from_secs(1)).expect("an event in 1 s");
    assert!(t0.elapsed() < Duration::from_secs(1));
    let got: StudyView = serde_json::from_str(&data).unwrap();
    assert_eq!(got, s);
    // A second one, and a replacement, arrive too.
    let mut s2 = s.clone();
    s2.flag = Some("suspected bone infection".into());
    s2.pbt = Some(false);
    srv.dash.publish(s2.clone(), None);
    let data = next_event(&mut r, "study", Instant::now() + Duration::from_secs(1)).unwrap();
    assert_eq!(serde_json::from_str::<StudyView>(&data).unwrap(), s2);
}

#[test]
fn stops_within_300_ms_even_with_live_clients() {
    let mut srv = Server::start(10);
    let (status, _, mut r) = open_events(srv.addr);
    assert_eq!(status, 200);
    // An idle keep-alive connection too.
    let mut idle = TcpStream::connect(srv.addr).unwrap();
    write!(
        idle,
        "GET /api/status HTTP/1.1\r\nHost: x\r\n{}\r\n\r\n",
        bearer()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    srv.stop.store(true, Ordering::SeqCst);
    srv.handle.take().unwrap().join().unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(300), "stopping took {took:?}");
    // The live stream ended.
    let mut rest = Vec::new();
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let _ = r.read_to_end(&mut rest);
    assert!(TcpStream::connect(srv.addr).is_err() || get_fails(srv.addr));
}

fn get_fails(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut b = [0u8; 16];
    !matches!(s.read(&mut b), Ok(n) if n > 0)
}

#[test]
fn an_empty_token_is_refused() {
    let dash = Arc::new(Dashboard::new(10, Box::new(status)));
    let cfg = DashboardConfig::new("127.0.0.1:0".parse().unwrap(), " ");
    let e = serve(dash, cfg, Arc::new(AtomicBool::new(false))).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn constant_time_compare() {
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"abcd"));
    assert!(!ct_eq(b"", b"a"));
}

#[test]
fn the_access_log_has_method_path_and_status_but_no_query_string() {
    let uri: axum::http::Uri = "/api/studies/ab01?token=s3cret&x=DOE%5EJANE"
        .parse()
        .unwrap();
    let ((), events, raw) = crate::testlog::capture(|| {
        access_log(&axum::http::Method::GET, &uri, StatusCode::OK);
        access_log(&axum::http::Method::POST, &uri, StatusCode::UNAUTHORIZED);
    });
    assert_eq!(events.len(), 2, "{raw}");
    let f = &events[0]["fields"];
    assert_eq!(events[0]["level"], "INFO");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/api/studies/ab01");
    assert_eq!(f["status"], 200);
    assert_eq!(events[1]["level"], "WARN", "refusals stand out");
    assert_eq!(events[1]["fields"]["status"], 401);
    for secret in ["s3cret", "token", "DOE", "JANE", "?"] {
        assert!(!raw.contains(secret), "{secret} in {raw}");
    }
    let long: axum::http::Uri = format!("/{}", "a".repeat(500)).parse().unwrap();
    assert_eq!(log_path(&long).len(), 200);
}
