//! ListShards pagination of the Kinesis source against moto and kinesalite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_cloud::connection::kinesis::KinesisConfig;
use osprey_cloud::source::kinesis::list_shards_paged;
use osprey_tests::{moto_endpoint, unique_name};

async fn lists_across_pages(endpoint: &str) {
    let cfg = KinesisConfig::new(unique_name("pages")).with_endpoint_url(endpoint);
    let client = cfg.client().await;
    client
        .create_stream()
        .stream_name(&cfg.stream)
        .shard_count(5)
        .send()
        .await
        .unwrap();
    let mut all = list_shards_paged(&client, &cfg, None).await.unwrap();
    for _ in 0..50 {
        if all.len() == 5 {
            break;
        }
        // kinesalite creates shards a moment after CreateStream returns.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        all = list_shards_paged(&client, &cfg, None).await.unwrap();
    }
    let paged = list_shards_paged(&client, &cfg, Some(2)).await.unwrap();
    assert_eq!(paged, all, "pages of 2 must give the same 5 shards");
    let mut ids: Vec<_> = paged.iter().map(|s| s.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{ids:?}");
}

#[tokio::test]
async fn moto_lists_every_shard_across_pages() {
    lists_across_pages(&moto_endpoint()).await;
}

#[tokio::test]
async fn kinesalite_lists_every_shard_across_pages() {
    let endpoint = std::env::var("OSPREY_TEST_KINESALITE_ENDPOINT")
        .expect("OSPREY_TEST_KINESALITE_ENDPOINT is not set: run through `bash tests/run.sh`");
    lists_across_pages(&endpoint).await;
}
