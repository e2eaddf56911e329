//! Lambda event fixtures: Kinesis events as the event source mapping delivers them, Firehose
//! data-transformation events as a delivery stream with a Kinesis source invokes its
//! transformer, and the Lambda's DynamoDB tables on the moto server tests/run.sh started.

use osprey_lambda::state::DynamoState;

/// A DynamoDB client for the moto server ([`crate::moto_endpoint`]).
pub async fn moto_dynamodb() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(crate::moto_endpoint())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// The Lambda's state and dead-letter tables, new on moto (names from `prefix`), and the
/// client that made them.
///
/// # Panics
///
/// When moto refuses a table.
pub async fn moto_state_tables(prefix: &str) -> (aws_sdk_dynamodb::Client, String, String) {
    let client = moto_dynamodb().await;
    let (table, dead) = (
        crate::unique_name(prefix),
        crate::unique_name(&format!("{prefix}-dead")),
    );
    for name in [&table, &dead] {
        DynamoState::create_table(&client, name)
            .await
            .unwrap_or_else(|e| panic!("cannot create table {name} on moto: {e}"));
    }
    (client, table, dead)
}

/// Standard base64 with padding (the `data` of a Kinesis record).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The JSON of a Kinesis event as the Lambda event source mapping delivers it: `records` as
/// (partition key, data), shard 0 of `stream`, sequence numbers counting from `first`.
pub fn kinesis_event_json(stream: &str, first: u32, records: &[(String, Vec<u8>)]) -> String {
    let records: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, (key, data))| {
            let seq = format!("49568167373333333333333333333333333333333333{:08}", first as usize + i);
            format!(
                r#"{{"kinesis": {{"kinesisSchemaVersion": "1.0", "partitionKey": "{key}",
  "sequenceNumber": "{seq}", "data": "{data}", "approximateArrivalTimestamp": 1767225600.477}},
  "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "shardId-000000000000:{seq}",
  "eventName": "aws:kinesis:record", "invokeIdentityArn": "arn:aws:iam::123456789012:role/r",
  "awsRegion": "us-east-1", "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/{stream}"}}"#,
                data = base64(data)
            )
        })
        .collect();
    format!(r#"{{"Records": [{}]}}"#, records.join(","))
}

/// The JSON of a Kinesis Data Firehose data-transformation event, as a delivery stream whose
/// source is the Kinesis stream `stream` invokes its transformer (the shape of the Firehose
/// developer guide): `records` as (partition key, data), shard 0, record ids `rec-0`, `rec-1`,
/// …, every record arrived at `arrived_ms`.
pub fn firehose_event_json(stream: &str, arrived_ms: i64, records: &[(String, Vec<u8>)]) -> String {
    let records: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, (key, data))| {
            let seq = format!("49568167373333333333333333333333333333333333{i:08}");
            format!(
                r#"{{"recordId": "rec-{i}", "approximateArrivalTimestamp": {arrived_ms},
  "data": "{data}", "kinesisRecordMetadata": {{"sequenceNumber": "{seq}", "subsequenceNumber": 0,
  "partitionKey": "{key}", "shardId": "shardId-000000000000",
  "approximateArrivalTimestamp": {arrived_ms}}}}}"#,
                data = base64(data)
            )
        })
        .collect();
    format!(
        r#"{{"invocationId": "a7234216-12b6-4bc0-96d7-82606c0e80cf",
  "sourceKinesisStreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
  "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/osprey-archive",
  "region": "us-east-1", "records": [{}]}}"#,
        records.join(",")
    )
}
