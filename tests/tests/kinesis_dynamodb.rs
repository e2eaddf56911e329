//! DynamoDB shard checkpoints and leases (`osprey_cloud::source::kinesis::dynamo`) against
//! moto's DynamoDB: conditional writes keep two consumers off one shard.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::time::Duration;

use osprey_cloud::source::kinesis::checkpoint::Claim;
use osprey_cloud::source::kinesis::dynamo::{DynamoCheckpoints, DynamoError};
use osprey_tests::{moto_endpoint, unique_name};

async fn client() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

#[tokio::test]
async fn a_leased_shard_is_refused_to_a_second_consumer_until_released() {
    let client = client().await;
    let table = unique_name("cp");
    DynamoCheckpoints::create_table(&client, &table)
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let a = DynamoCheckpoints::new(client.clone(), &table, "stream", "consumer-a", lease);
    let b = DynamoCheckpoints::new(client.clone(), &table, "stream", "consumer-b", lease);

    assert_eq!(a.claim("shard-0").await.unwrap(), Claim::Owned(None));
    assert_eq!(b.claim("shard-0").await.unwrap(), Claim::Taken);
    // Another shard is free for b.
    assert_eq!(b.claim("shard-1").await.unwrap(), Claim::Owned(None));

    a.save("shard-0", "4959").await.unwrap();
    assert!(matches!(
        b.save("shard-0", "9999").await,
        Err(DynamoError::LeaseLost { .. })
    ));
    assert_eq!(a.get("shard-0").await.unwrap().as_deref(), Some("4959"));
    // Claiming again as the owner resumes from the checkpoint.
    assert_eq!(
        a.claim("shard-0").await.unwrap(),
        Claim::Owned(Some("4959".to_owned()))
    );

    a.release("shard-0").await.unwrap();
    assert_eq!(
        b.claim("shard-0").await.unwrap(),
        Claim::Owned(Some("4959".to_owned())),
        "a released lease is free at once, with the checkpoint"
    );
    assert!(matches!(
        a.save("shard-0", "5000").await,
        Err(DynamoError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn a_lapsed_lease_can_be_taken_over() {
    let client = client().await;
    let table = unique_name("cp");
    DynamoCheckpoints::create_table(&client, &table)
        .await
        .unwrap();
    let short = DynamoCheckpoints::new(
        client.clone(),
        &table,
        "stream",
        "crashed",
        Duration::from_millis(1),
    );
    let b = DynamoCheckpoints::new(client, &table, "stream", "b", Duration::from_secs(60));
    assert_eq!(short.claim("shard-0").await.unwrap(), Claim::Owned(None));
    short.save("shard-0", "17").await.unwrap();
    // The lease lapses 1 ms after the save; wait well past it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.claim("shard-0").await.unwrap(),
        Claim::Owned(Some("17".to_owned()))
    );
}

#[tokio::test]
async fn a_restarted_consumer_takes_its_own_live_lease_back_at_once() {
    let client = client().await;
    let table = unique_name("cp");
    DynamoCheckpoints::create_table(&client, &table)
        .await
        .unwrap();
    let lease = Duration::from_secs(600);
    // The consumer that crashed: its lease has ten minutes left.
    let me = DynamoCheckpoints::stable_owner("osprey");
    assert!(me.starts_with("osprey@"), "{me}");
    let crashed = DynamoCheckpoints::new(client.clone(), &table, "stream", me.clone(), lease);
    assert_eq!(crashed.claim("shard-0").await.unwrap(), Claim::Owned(None));
    crashed.save("shard-0", "4959").await.unwrap();
    drop(crashed);
    // Restarted on the same host under the same name: the lease is its own.
    let restarted = DynamoCheckpoints::new(client.clone(), &table, "stream", me, lease);
    assert_eq!(
        restarted.claim("shard-0").await.unwrap(),
        Claim::Owned(Some("4959".to_owned()))
    );
    // Another consumer name on this host is another consumer: still refused.
    let other = DynamoCheckpoints::stable_owner("osprey-2");
    let other = DynamoCheckpoints::new(client.clone(), &table, "stream", other, lease);
    assert_eq!(other.claim("shard-0").await.unwrap(), Claim::Taken);
}
