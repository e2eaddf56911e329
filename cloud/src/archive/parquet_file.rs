//! One archive file: readings as Parquet rows, through the `parquet` crate's column writers
//! (no Arrow: the rows are flat, and Arrow would add most of a minute to a cold build).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// The archive's schema, one row per reading. `time` is the reading's event time (the
/// device's clock), `received` when the cloud received its message (the cloud's clock; the
/// file's `date=`/`hour=` partition is its hour). `device`, `epoch` and `seq` identify the
/// message the reading came in (protocol/SPEC.md), so a reading's origin can be traced and the
/// archive checked for gaps per device.
pub const SCHEMA: &str = "message osprey_reading {
    REQUIRED BYTE_ARRAY device (STRING);
    REQUIRED INT64 epoch;
    REQUIRED INT64 seq;
    REQUIRED BYTE_ARRAY sensor (STRING);
    REQUIRED BYTE_ARRAY metric (STRING);
    REQUIRED BYTE_ARRAY unit (STRING);
    REQUIRED INT64 time (TIMESTAMP(MILLIS, true));
    REQUIRED DOUBLE value;
    REQUIRED INT64 received (TIMESTAMP(MILLIS, true));
}";

/// Rows per row group: bounded, so a reader can skip by statistics and a writer's pages stay
/// small.
const ROW_GROUP: usize = 131_072;

/// Readings in columns, in [`SCHEMA`]'s order.
#[derive(Debug, Default)]
pub struct Rows {
    device: Vec<ByteArray>,
    epoch: Vec<i64>,
    seq: Vec<i64>,
    sensor: Vec<ByteArray>,
    metric: Vec<ByteArray>,
    unit: Vec<ByteArray>,
    time: Vec<i64>,
    value: Vec<f64>,
    received: Vec<i64>,
}

impl Rows {
    /// Appends the readings of one series of one message.
    pub fn push_series(
        &mut self,
        device: &str,
        epoch: i64,
        seq: i64,
        (sensor, metric, unit): (&str, &str, &str),
        readings: impl Iterator<Item = (i64, f64)>,
        received_ms: i64,
    ) {
        // One buffer per name, shared by its rows (ByteArray clones are reference counts).
        let name = |s: &str| ByteArray::from(s.as_bytes().to_vec());
        let (d, s, m, u) = (name(device), name(sensor), name(metric), name(unit));
        for (t, v) in readings {
            self.device.push(d.clone());
            self.epoch.push(epoch);
            self.seq.push(seq);
            self.sensor.push(s.clone());
            self.metric.push(m.clone());
            self.unit.push(u.clone());
            self.time.push(t);
            self.value.push(v);
            self.received.push(received_ms);
        }
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// No readings.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

/// Writes `rows` to a new file at `path` (replacing a leftover one) and syncs it.
pub fn write(path: &Path, rows: &Rows) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    use std::os::unix::fs::OpenOptionsExt;
    // Readable by the owner and its group only, like the directory (0750).
    let file = OpenOptions::new()
        .mode(0o640)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| err(&e))?;
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(|e| err(&e))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("osprey {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(|e| err(&e))?;
    let mut start = 0;
    while start < rows.len() {
        let end = (start + ROW_GROUP).min(rows.len());
        let r = start..end;
        let mut group = writer.next_row_group().map_err(|e| err(&e))?;
        let mut index = 0;
        while let Some(mut column) = group.next_column().map_err(|e| err(&e))? {
            let written = match index {
                0 => bytes(&mut column, &rows.device[r.clone()]),
                1 => ints(&mut column, &rows.epoch[r.clone()]),
                2 => ints(&mut column, &rows.seq[r.clone()]),
                3 => bytes(&mut column, &rows.sensor[r.clone()]),
                4 => bytes(&mut column, &rows.metric[r.clone()]),
                5 => bytes(&mut column, &rows.unit[r.clone()]),
                6 => ints(&mut column, &rows.time[r.clone()]),
                7 => column
                    .typed::<DoubleType>()
                    .write_batch(&rows.value[r.clone()], None, None)
                    .map(drop),
                _ => ints(&mut column, &rows.received[r.clone()]),
            };
            written.map_err(|e| err(&e))?;
            column.close().map_err(|e| err(&e))?;
            index += 1;
        }
        group.close().map_err(|e| err(&e))?;
        start = end;
    }
    let file = writer.into_inner().map_err(|e| err(&e))?;
    file.sync_all().map_err(|e| err(&e))
}

type ColumnWriter<'a> = parquet::file::writer::SerializedColumnWriter<'a>;

fn bytes(column: &mut ColumnWriter<'_>, values: &[ByteArray]) -> parquet::errors::Result<()> {
    column
        .typed::<ByteArrayType>()
        .write_batch(values, None, None)
        .map(drop)
}

fn ints(column: &mut ColumnWriter<'_>, values: &[i64]) -> parquet::errors::Result<()> {
    column
        .typed::<Int64Type>()
        .write_batch(values, None, None)
        .map(drop)
}
