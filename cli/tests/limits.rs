//! `[limits]` on a 3-site playground of real `arkd` processes with low limits, through the
//! SDK and the `ark` CLI: listings page with cursors and return every key exactly once, an
//! object over the size limit is refused and leaves nothing, the namespace count holds even
//! for two creates racing through different nodes, a third concurrent upload is refused
//! while two are in progress, and a burst over the request rate is refused and admitted
//! again once the bucket has refilled.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use ark_client::objects::{GetOptions, PutOptions, PutSource};
use ark_client::{
    ArkClient, ClientError, DurabilityMode, ListKeysOptions, ListObjectsOptions, NamespacePolicy, ReadOptions,
};
use ark_playground::playground::{self, Layout};
use ark_playground::testkit::{stderr, stdout, Pg};
use tokio::io::AsyncWriteExt;

const PAGE: usize = 10;
const OBJECT_BYTES_MAX: usize = 1024 * 1024;
const RATE: u32 = 200;
const STREAM_IDLE: Duration = Duration::from_secs(4);

async fn playground() -> Pg {
    ark_playground::testkit::arkd_built();
    let limits = [
        format!("object_bytes_max = {OBJECT_BYTES_MAX}"),
        "namespaces_max = 3".to_string(),
        format!("list_page_max = {PAGE}"),
        "uploads_per_identity_max = 2".to_string(),
        format!("requests_per_second_per_identity = {RATE}"),
        format!("requests_burst_per_identity = {RATE}"),
        format!("stream_idle_timeout_ms = {}", STREAM_IDLE.as_millis()),
    ];
    let layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        ready_timeout: Duration::from_secs(60),
        settings: limits.into_iter().map(|l| (0, "limits".to_string(), l)).collect(),
        ..Layout::default()
    };
    let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
    Pg { dir, children }
}

fn policy() -> NamespacePolicy {
    NamespacePolicy::replicated(3, 2, DurabilityMode::Sync)
}

async fn put_bytes(c: &ArkClient, ns: &str, key: &str, data: Vec<u8>) -> Result<u64, ClientError> {
    let source = PutSource::Reader {
        size: Some(data.len() as u64),
        reader: Box::new(std::io::Cursor::new(data)),
    };
    Ok(c.put_object(ns, key, source, &PutOptions::default())
        .await?
        .object
        .version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_limits_are_enforced_with_clear_errors_and_listings_page_through_everything() {
    let pg = playground().await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    // A client of node 1 only: the limits are per node.
    let c = pg.client_of(1);

    // --- KV listing: pages of at most PAGE keys, every key exactly once through cursors.
    let keys: Vec<String> = (0..25).map(|i| format!("k/{i:02}")).collect();
    for k in &keys {
        c.put(k, k.as_bytes()).await.unwrap();
    }
    c.put("l", b"outside the prefix").await.unwrap();
    let mut walked = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = c.list_page("k/", &ListKeysOptions::default(), &cursor).await.unwrap();
        assert!(page.items.len() <= PAGE, "a page of {} keys", page.items.len());
        assert_eq!(page.more, !page.next_cursor.is_empty());
        walked.extend(page.items.into_iter().map(|(k, v)| {
            assert_eq!(v.value, k.as_bytes());
            k
        }));
        pages += 1;
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
        assert!(pages < 10, "the walk does not end");
    }
    assert_eq!(walked, keys, "every key once, in order");
    assert_eq!(pages, 3);
    // The SDK walks the pages itself; a limit cuts the walk and says so.
    let (all, more) = c.list("k/", &ListKeysOptions::default()).await.unwrap();
    assert_eq!(all.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), keys);
    assert!(!more);
    let (first, more) = c
        .list(
            "k/",
            &ListKeysOptions {
                limit: 15,
                stale: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((first.len(), more), (15, true));
    // A cursor from another listing is refused.
    let err = c
        .list_page("l", &ListKeysOptions::default(), &cursor)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");
    // So does the CLI, page by page.
    let o = pg.ark(&["kv", "ls", "k/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), keys);

    // --- Object listing.
    c.create_namespace("objs", policy()).await.unwrap();
    let okeys: Vec<String> = (0..23).map(|i| format!("p/{i:02}")).collect();
    for k in &okeys {
        put_bytes(&c, "objs", k, k.as_bytes().to_vec()).await.unwrap();
    }
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = c
            .list_objects_page("objs", &ListObjectsOptions::default(), &cursor)
            .await
            .unwrap();
        assert!(page.objects.len() <= PAGE, "a page of {} objects", page.objects.len());
        walked.extend(page.objects.into_iter().map(|o| o.key));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
        assert!(walked.len() <= okeys.len(), "the walk repeats");
    }
    assert_eq!(walked, okeys, "every object once, in order");
    let (all, more) = c.list_objects("objs", &ListObjectsOptions::default()).await.unwrap();
    assert_eq!((all.len(), more), (okeys.len(), false));
    let o = pg.ark(&["ls", "objs", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed.len(), okeys.len(), "ark ls walks every page");

    // --- Object size: refused from the announced size, and once streamed bytes pass it.
    put_bytes(&c, "objs", "exactly-max", vec![7; OBJECT_BYTES_MAX])
        .await
        .unwrap();
    let err = put_bytes(&c, "objs", "big-announced", vec![7; OBJECT_BYTES_MAX + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("limits.object_bytes_max")),
        "{err:?}"
    );
    let unannounced = PutSource::reader(std::io::Cursor::new(vec![9u8; 3 * OBJECT_BYTES_MAX]));
    let err = c
        .put_object("objs", "big-streamed", unannounced, &PutOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("limits.object_bytes_max")),
        "{err:?}"
    );
    for key in ["big-announced", "big-streamed"] {
        let err = c
            .get_object("objs", key, &GetOptions::default(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotFound(_)), "{key}: {err:?}");
    }
    let (all, _) = c
        .list_objects(
            "objs",
            &ListObjectsOptions {
                prefix: "big".into(),
                all_versions: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(all.is_empty(), "a refused upload left {all:?}");

    // --- Namespaces: at most 3 in the cluster.
    c.create_namespace("n2", policy()).await.unwrap();
    c.create_namespace("n3", policy()).await.unwrap();
    let err = c.create_namespace("n4", policy()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m) if m.contains("limits.namespaces_max")),
        "{err:?}"
    );
    // Six creates for the last place, two through each node at once (connections opened
    // first, so that they really race): exactly one wins, even where every node's own count
    // still allowed it.
    assert!(c.delete_namespace("n3").await.unwrap());
    let clients: Vec<ArkClient> = (1..=3).map(|n| pg.client_of(n)).collect();
    for cl in &clients {
        cl.get("k/00", &ReadOptions::STALE).await.unwrap();
    }
    let creates = clients.iter().enumerate().flat_map(|(n, cl)| {
        (0..2).map(move |i| async move { cl.create_namespace(&format!("r{n}{i}"), policy()).await })
    });
    let results = futures::future::join_all(creates).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one create passes: {results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(lost, ClientError::ResourceExhausted(m) if m.contains("limits.namespaces_max")),
            "{lost:?}"
        );
    }
    assert_eq!(c.list_namespaces().await.unwrap().len(), 3);

    // --- Uploads in progress: two held open (their sources send nothing yet), the third
    // is refused.
    let mut writers = Vec::new();
    let mut held = Vec::new();
    for i in 0..2 {
        let (w, r) = tokio::io::duplex(64 * 1024);
        writers.push(w);
        let c = c.clone();
        held.push(tokio::spawn(async move {
            c.put_object(
                "objs",
                &format!("held-{i}"),
                PutSource::reader(r),
                &PutOptions::default(),
            )
            .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.metric(1, "ark_client_uploads_in_progress") < 2.0 {
        assert!(Instant::now() < deadline, "the two uploads never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = put_bytes(&c, "objs", "third", b"x".to_vec()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ResourceExhausted(m) if m.contains("limits.uploads_per_identity_max")),
        "{err:?}"
    );
    for mut w in writers {
        w.write_all(b"held").await.unwrap();
        w.shutdown().await.unwrap();
    }
    for h in held {
        h.await.unwrap().unwrap();
    }
    put_bytes(&c, "objs", "third", b"x".to_vec()).await.unwrap();

    // --- An upload whose client sends nothing more is dropped after the idle timeout, and
    // its permit comes back.
    let stalls = |pg: &Pg| pg.metric(1, "ark_limit_refusals_total{limit=\"stream_idle\"}");
    let before = stalls(&pg);
    let (w, r) = tokio::io::duplex(1024);
    let stuck = {
        let c = c.clone();
        tokio::spawn(async move {
            c.put_object("objs", "stuck", PutSource::reader(r), &PutOptions::default())
                .await
        })
    };
    let started = Instant::now();
    while stalls(&pg) <= before {
        assert!(
            started.elapsed() < STREAM_IDLE + Duration::from_secs(10),
            "no idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= STREAM_IDLE, "timed out early");
    // (The SDK tries again, as after any lost connection, until it is stopped.)
    stuck.abort();
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.metric(1, "ark_client_uploads_in_progress") > 0.0 {
        assert!(Instant::now() < deadline, "the stalled upload's permit was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // --- Request rate: a burst well over the bucket is partly refused, and the refusal says
    // when to come back; then requests are admitted again. (Linearizable reads: the SDK
    // moves a stale read on to another node, or retries it, when one refuses.)
    let burst = (0..3 * RATE).map(|_| c.get("k/00", &ReadOptions::LINEARIZABLE));
    let answers = futures::future::join_all(burst).await;
    let refused: Vec<String> = answers
        .iter()
        .filter_map(|a| match a {
            Err(ClientError::ResourceExhausted(m)) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let admitted = answers.iter().filter(|a| matches!(a, Ok(Some(_)))).count();
    assert_eq!(admitted + refused.len(), answers.len(), "{answers:?}");
    assert!(
        !refused.is_empty() && admitted >= RATE as usize / 2,
        "{admitted} admitted"
    );
    let last = refused.last().unwrap();
    assert!(last.contains("limits.requests_per_second_per_identity"), "{last}");
    let retry_ms: u64 = last
        .split("retry in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        retry_ms <= 1000 / u64::from(RATE) + 1,
        "one token comes back within {retry_ms} ms"
    );
    tokio::time::sleep(Duration::from_millis(retry_ms + 1000)).await;
    for _ in 0..RATE / 2 {
        c.get("k/00", &ReadOptions::LINEARIZABLE).await.unwrap();
    }
}
