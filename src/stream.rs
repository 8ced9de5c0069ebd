//! The change stream: a logical replication session on the source, decoded into [`Change`]s.
//!
//! Two young crates do the work, pinned exactly and used only here, so either can be replaced
//! without touching the applier: `pgwire_replication` speaks the replication protocol
//! (`CREATE_REPLICATION_SLOT`, `START_REPLICATION`, keepalives, standby status updates) and
//! `pg_walstream` decodes pgoutput (protocol version 1; values in text, or in binary when the
//! stream asks for it and the source is PostgreSQL 14 or newer). The applier sees only
//! [`ChangeSource`] and the types below.

use bytes::Bytes;
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};

use crate::conn::Resolved;

/// A WAL position.
pub type WalPos = u64;

/// `0/16B3748` form of a WAL position.
pub fn lsn_text(pos: WalPos) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xffff_ffff)
}

/// Parses `0/16B3748`.
pub fn parse_lsn(s: &str) -> Option<WalPos> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// One column value of a decoded row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change: pgoutput does not send it.
    Unchanged,
    /// The value in its text form (the type's output function).
    Text(Bytes),
    /// The value in its binary form (the type's send function): a stream started with
    /// [`StreamSettings::binary`].
    Binary(Bytes),
}

impl Value {
    /// The value's bytes, in whichever form it came; `None` for NULL and unchanged values.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Text(b) | Value::Binary(b) => Some(b),
            Value::Null | Value::Unchanged => None,
        }
    }
}

/// A decoded row, in the relation's column order.
pub type Tuple = Vec<Value>;

/// A column of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Part of the replica identity (the key updates and deletes name).
    pub key: bool,
    /// Its type on the source (oid).
    pub type_oid: u32,
}

/// A published table as the stream describes it (sent before its first change, and again after
/// its definition changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The source's oid of the table (stream-local id).
    pub id: u32,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Columns sent (generated columns are not).
    pub columns: Vec<Column>,
}

/// What the stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A source transaction begins.
    Begin {
        /// Its (top-level) transaction id.
        xid: u32,
        /// Where its commit record is.
        final_lsn: WalPos,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// It committed.
    Commit {
        /// The end of its commit record: where a restart resumes after it.
        end_lsn: WalPos,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// A table's description.
    Relation(Relation),
    /// A row inserted.
    Insert {
        /// The relation id.
        rel: u32,
        /// The row.
        new: Tuple,
    },
    /// A row updated.
    Update {
        /// The relation id.
        rel: u32,
        /// The old key (when the key changed) or the whole old row (replica identity full).
        old: Option<Tuple>,
        /// The new row (unchanged TOAST values are [`Value::Unchanged`]).
        new: Tuple,
    },
    /// A row deleted.
    Delete {
        /// The relation id.
        rel: u32,
        /// Its key (or whole row, replica identity full).
        old: Tuple,
    },
    /// Tables truncated.
    Truncate {
        /// Relation ids.
        rels: Vec<u32>,
        /// `TRUNCATE ... CASCADE`.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY`.
        restart_identity: bool,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// Where it is.
        lsn: WalPos,
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The server's heartbeat: everything up to `wal_end` was sent.
    KeepAlive {
        /// The server's WAL end.
        wal_end: WalPos,
    },
    /// The origin of the transaction being sent (pgoutput names it when the transaction was
    /// applied under a replication origin).
    Origin {
        /// The origin's name.
        name: String,
    },
    /// Something the applier does not need (types).
    Other,
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    /// What happened.
    pub message: String,
    /// A network problem or a server restart: connecting again may work.
    pub transient: bool,
}

impl From<pgwire_replication::PgWireError> for StreamError {
    fn from(e: pgwire_replication::PgWireError) -> Self {
        StreamError { transient: e.is_transient() || e.is_io(), message: e.to_string() }
    }
}

fn protocol(message: String) -> StreamError {
    StreamError { message, transient: false }
}

/// Where changes come from: a replication session, or anything else that says the same.
pub trait ChangeSource {
    /// The next change; `None` when the stream ended cleanly.
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Change>, StreamError>> + Send;
    /// Tells the source that everything up to `pos` is durable on the target: the slot may
    /// release it.
    fn ack(&self, pos: WalPos);
}

/// A pgoutput stream read over the replication protocol.
pub struct PgoutputStream {
    client: ReplicationClient,
    parser: LogicalReplicationParser,
}

/// Settings of a stream.
pub struct StreamSettings<'a> {
    /// Where the source is.
    pub source: &'a Resolved,
    /// The slot.
    pub slot: &'a str,
    /// The publication.
    pub publication: &'a str,
    /// Where to start (0: the slot's confirmed position).
    pub start: WalPos,
    /// `application_name`.
    pub application_name: &'a str,
    /// Values in binary (`binary 'true'`, PostgreSQL 14 and later): only for tables whose every
    /// column's type has a binary form both servers read the same (see
    /// `catalog::binary_types`).
    pub binary: bool,
}

impl PgoutputStream {
    /// Connects and starts streaming from `start`. Standby status updates report `start` as
    /// durable until [`ChangeSource::ack`] says more.
    pub async fn start(s: StreamSettings<'_>) -> Result<PgoutputStream, StreamError> {
        let cfg =
            crate::conn::replication_config(s.source, s.application_name, s.slot, s.publication)
                .with_start_lsn(Lsn(s.start))
                .with_status_interval(std::time::Duration::from_millis(500))
                .with_wakeup_interval(std::time::Duration::from_secs(1))
                .with_buffer_size(16 * 1024)
                .with_binary(s.binary);
        let mut client = ReplicationClient::connect(cfg).await?;
        client.wait_started().await?;
        Ok(PgoutputStream { client, parser: LogicalReplicationParser::with_protocol_version(1) })
    }

    /// Ends the session.
    pub async fn stop(mut self) {
        let _ = self.client.shutdown().await;
    }
}

impl ChangeSource for PgoutputStream {
    async fn next(&mut self) -> Result<Option<Change>, StreamError> {
        let Some(ev) = self.client.recv().await? else { return Ok(None) };
        Ok(Some(match ev {
            ReplicationEvent::KeepAlive { wal_end, .. } => Change::KeepAlive { wal_end: wal_end.0 },
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                Change::Begin { xid, final_lsn: final_lsn.0, commit_time: commit_time_micros }
            }
            ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                Change::Commit { end_lsn: end_lsn.0, commit_time: commit_time_micros }
            }
            ReplicationEvent::Message { transactional, lsn, prefix, content } => {
                Change::Message { lsn: lsn.0, transactional, prefix, content }
            }
            ReplicationEvent::XLogData { data, .. } => decode(&mut self.parser, data)?,
            ReplicationEvent::StoppedAt { .. } => return Ok(None),
        }))
    }

    fn ack(&self, pos: WalPos) {
        self.client.update_applied_lsn(Lsn(pos));
    }
}

fn tuple(t: TupleData) -> Tuple {
    t.columns
        .into_iter()
        .map(|c| match c.data_type {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b'b' => Value::Binary(c.into_bytes()),
            _ => Value::Text(c.into_bytes()),
        })
        .collect()
}

/// Decodes one pgoutput message (protocol version 1).
pub fn decode(parser: &mut LogicalReplicationParser, data: Bytes) -> Result<Change, StreamError> {
    let m = parser
        .parse_wal_message_bytes(data)
        .map_err(|e| protocol(format!("cannot decode a pgoutput message: {e}")))?;
    Ok(match m.message {
        LogicalReplicationMessage::Begin { final_lsn, timestamp, xid } => {
            Change::Begin { xid, final_lsn, commit_time: timestamp }
        }
        LogicalReplicationMessage::Commit { end_lsn, timestamp, .. } => {
            Change::Commit { end_lsn, commit_time: timestamp }
        }
        LogicalReplicationMessage::Relation {
            relation_id,
            namespace,
            relation_name,
            replica_identity,
            columns,
        } => Change::Relation(Relation {
            id: relation_id,
            schema: namespace.to_string(),
            name: relation_name.to_string(),
            replica_identity: replica_identity as char,
            columns: columns
                .iter()
                .map(|c| Column { name: c.name.to_string(), key: c.is_key(), type_oid: c.type_id })
                .collect(),
        }),
        LogicalReplicationMessage::Insert { relation_id, tuple: t } => {
            Change::Insert { rel: relation_id, new: tuple(t) }
        }
        LogicalReplicationMessage::Update { relation_id, old_tuple, new_tuple, .. } => {
            Change::Update { rel: relation_id, old: old_tuple.map(tuple), new: tuple(new_tuple) }
        }
        LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
            Change::Delete { rel: relation_id, old: tuple(old_tuple) }
        }
        LogicalReplicationMessage::Truncate { relation_ids, flags } => Change::Truncate {
            rels: relation_ids,
            cascade: flags & 1 != 0,
            restart_identity: flags & 2 != 0,
        },
        LogicalReplicationMessage::Message { flags, lsn, prefix, content } => {
            Change::Message { lsn, transactional: flags & 1 != 0, prefix, content }
        }
        LogicalReplicationMessage::Origin { origin_name, .. } => {
            Change::Origin { name: origin_name }
        }
        LogicalReplicationMessage::Type { .. } => Change::Other,
        other => {
            return Err(protocol(format!(
                "unexpected pgoutput message for protocol version 1: {other:?}"
            )));
        }
    })
}

/// A replication session that created a slot and exported its snapshot: the snapshot stays
/// valid (for `SET TRANSACTION SNAPSHOT`) while this session is kept, and no longer.
pub struct SlotSession {
    _client: ReplicationClient,
    /// The slot's consistent point: the stream starts after it.
    pub consistent_point: WalPos,
    /// The exported snapshot's name.
    pub snapshot: String,
}

/// `CREATE_REPLICATION_SLOT` as the plan shows it and apply runs it, for a source of
/// `server_version_num` `version_num`: PostgreSQL 15 added the parenthesised options; 13 and 14
/// know only the older keyword form.
pub fn create_slot_command(slot: &str, version_num: i32) -> String {
    let options = if version_num >= 150000 { "(SNAPSHOT 'export')" } else { "EXPORT_SNAPSHOT" };
    format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {options}", crate::sql::ident(slot))
}

/// The same for a temporary slot, which the server drops when the session that created it
/// ends (continuous verification's consistent points).
pub fn create_temporary_slot_command(slot: &str, version_num: i32) -> String {
    create_slot_command(slot, version_num).replacen(" LOGICAL ", " TEMPORARY LOGICAL ", 1)
}

/// Creates the logical slot `slot` (pgoutput) on a replication session and keeps the session,
/// whose exported snapshot sees exactly what the slot's stream does not carry.
pub async fn create_slot(
    source: &Resolved,
    slot: &str,
    command: &str,
    application_name: &str,
) -> Result<SlotSession, StreamError> {
    slot_connection(source, slot, application_name).await?.create(slot, command).await
}

/// A replication session connected ahead of creating a slot (so that creating it is only the
/// command).
pub struct SlotConnection {
    client: ReplicationClient,
}

/// Connects a replication session for [`SlotConnection::create`].
pub async fn slot_connection(
    source: &Resolved,
    slot: &str,
    application_name: &str,
) -> Result<SlotConnection, StreamError> {
    let cfg = crate::conn::replication_config(source, application_name, slot, "-");
    Ok(SlotConnection { client: ReplicationClient::connect_gated(cfg).await? })
}

impl SlotConnection {
    /// Runs `command` (`CREATE_REPLICATION_SLOT ...`, with an exported snapshot) and keeps the
    /// session.
    pub async fn create(mut self, slot: &str, command: &str) -> Result<SlotSession, StreamError> {
        // A plan saved before the command was recorded runs the PostgreSQL 15 form.
        let command = if command.is_empty() {
            create_slot_command(slot, 150000)
        } else {
            command.to_string()
        };
        let rows = self.client.simple_query(&command).await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let text = |i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| protocol(format!("CREATE_REPLICATION_SLOT: column {i} is missing")))
        };
        let consistent_point = parse_lsn(&text(1)?)
            .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT: bad consistent point".into()))?;
        Ok(SlotSession { _client: self.client, consistent_point, snapshot: text(2)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_creation_uses_the_syntax_of_the_sources_version() {
        assert_eq!(
            create_slot_command("pgtransit_a", 130000),
            "CREATE_REPLICATION_SLOT \"pgtransit_a\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot_command("pgtransit_a", 140010),
            "CREATE_REPLICATION_SLOT \"pgtransit_a\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot_command("pgtransit_a", 150000),
            "CREATE_REPLICATION_SLOT \"pgtransit_a\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_temporary_slot_command("pgtransit_a", 130000),
            "CREATE_REPLICATION_SLOT \"pgtransit_a\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
    }

    #[test]
    fn wal_positions_print_and_parse_like_postgres() {
        assert_eq!(lsn_text(0x1_6B37_4800), "1/6B374800");
        assert_eq!(parse_lsn("1/6B374800"), Some(0x1_6B37_4800));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn pgoutput_messages_decode_into_changes() {
        let mut p = LogicalReplicationParser::with_protocol_version(1);
        // Relation: id 16384, "public"."t", identity 'd', two columns (id key, note).
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0t\0");
        rel.push(b'd');
        rel.extend(2u16.to_be_bytes());
        for (flags, name) in [(1u8, "id"), (0u8, "note")] {
            rel.push(flags);
            rel.extend(name.as_bytes());
            rel.push(0);
            rel.extend(23u32.to_be_bytes());
            rel.extend((-1i32).to_be_bytes());
        }
        let Change::Relation(r) = decode(&mut p, Bytes::from(rel)).unwrap() else { panic!() };
        assert_eq!((r.schema.as_str(), r.name.as_str(), r.replica_identity), ("public", "t", 'd'));
        assert_eq!(r.columns.iter().map(|c| c.key).collect::<Vec<_>>(), vec![true, false]);
        // Update with an unchanged TOAST value and a NULL.
        let mut upd = vec![b'U'];
        upd.extend(16384u32.to_be_bytes());
        upd.push(b'N');
        upd.extend(2u16.to_be_bytes());
        upd.push(b't');
        upd.extend(1u32.to_be_bytes());
        upd.push(b'7');
        upd.push(b'u');
        let change = decode(&mut p, Bytes::from(upd)).unwrap();
        assert_eq!(
            change,
            Change::Update {
                rel: 16384,
                old: None,
                new: vec![Value::Text(Bytes::from_static(b"7")), Value::Unchanged]
            }
        );
        let mut trunc = vec![b'T'];
        trunc.extend(1u32.to_be_bytes());
        trunc.push(3);
        trunc.extend(16384u32.to_be_bytes());
        assert_eq!(
            decode(&mut p, Bytes::from(trunc)).unwrap(),
            Change::Truncate { rels: vec![16384], cascade: true, restart_identity: true }
        );
    }
}
