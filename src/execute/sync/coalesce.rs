//! Coalescing: the changes of one target transaction reduced to each row's net change, applied
//! as a few set-based statements per table.
//!
//! Why it is safe. A batch of source transactions is one target transaction: nothing outside
//! sees the rows between its changes, only the batch's end. Within it, what the target must end
//! with is each row's last version, or its absence. Rows are told apart by their replica
//! identity key, and the order between rows only matters where rows can meet:
//! - on the key itself: one entry per key keeps every change to that row in order;
//! - on another unique index or exclusion constraint that does not include the whole key, or
//!   through a trigger or rule that fires on the target (`ENABLE ALWAYS`/`REPLICA`): such a
//!   table is never coalesced (its changes go one by one, in order);
//! - through foreign keys: not checked for replicated rows (`session_replication_role =
//!   replica`), as in a native subscription.
//!
//! A change whose effect the buffer cannot hold (a key change, a table without a key, an
//! insert of a row the batch already has) flushes every buffer first and goes on its own, so it
//! keeps its place. The buffer is applied deletes first, then updates, then inserts: distinct
//! keys do not meet, and a row deleted and inserted again in the batch is deleted, then
//! inserted with its last version.

use std::collections::HashMap;

use bytes::Bytes;

use crate::stream::{Tuple, Value};

/// A row's net change within the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Net {
    /// Not there before the batch: inserted with this version.
    Insert(Tuple),
    /// There before: these columns set (`Unchanged`: left as they are).
    Update(Tuple),
    /// There before, gone after: the key tuple.
    Delete(Tuple),
    /// There before, deleted, then inserted again with this version.
    Replace(Tuple),
}

/// Whether the buffer took a change: `Err` gives the change's tuple back, to be applied on
/// its own after every buffer is flushed.
pub(crate) type Offer = Result<(), Tuple>;

/// One table's buffered changes.
#[derive(Debug, Default)]
pub(crate) struct TableChanges {
    /// Net change per key (in the order keys were first seen; `None`: inserted and deleted
    /// again, nothing left to do).
    rows: Vec<Option<Net>>,
    index: HashMap<Vec<Value>, usize>,
    /// Inserts into a table that is not coalesced by key (appended in order).
    appended: Vec<Tuple>,
}

/// What a table's buffer comes to: statements to run, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flush {
    /// Key tuples (the row's version: its key columns are read).
    pub(crate) deletes: Vec<Tuple>,
    /// Updates, grouped by the columns they set (in the order first seen).
    pub(crate) updates: Vec<(Vec<usize>, Vec<Tuple>)>,
    pub(crate) inserts: Vec<Tuple>,
}

/// Every table's buffered changes, and their size.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) tables: Vec<(u32, TableChanges)>,
    /// Roughly the memory the buffered values take (each change offered counted whole).
    pub(crate) bytes: usize,
}

/// A tuple's approximate size in memory.
fn size(t: &Tuple) -> usize {
    t.iter().map(|v| 32 + v.bytes().map_or(0, Bytes::len)).sum::<usize>() + 24
}

/// The tuple's values copied into one allocation: as received, each is a slice of the block
/// its message came in, which a value kept for the whole batch would keep alive.
fn compact(mut t: Tuple) -> Tuple {
    let mut all =
        bytes::BytesMut::with_capacity(t.iter().map(|v| v.bytes().map_or(0, Bytes::len)).sum());
    for b in t.iter().filter_map(Value::bytes) {
        all.extend_from_slice(b);
    }
    let mut all = all.freeze();
    for v in &mut t {
        if let Value::Text(b) | Value::Binary(b) = v {
            *b = all.split_to(b.len());
        }
    }
    t
}

/// `new` over `base`: a column `new` left unchanged keeps `base`'s value.
fn merge(base: &Tuple, new: Tuple) -> Tuple {
    new.into_iter()
        .zip(base)
        .map(|(n, b)| if n == Value::Unchanged { b.clone() } else { n })
        .collect()
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn table(&mut self, rel: u32) -> &mut TableChanges {
        let at = match self.tables.iter().position(|(r, _)| *r == rel) {
            Some(at) => at,
            None => {
                self.tables.push((rel, TableChanges::default()));
                self.tables.len() - 1
            }
        };
        &mut self.tables[at].1
    }

    fn taken(&mut self, bytes: usize) -> Offer {
        self.bytes += bytes;
        Ok(())
    }

    /// An insert into a table that is not coalesced by key: kept in order after the others.
    pub(crate) fn append(&mut self, rel: u32, new: Tuple) -> Offer {
        let new = compact(new);
        let n = size(&new);
        self.table(rel).appended.push(new);
        self.bytes += n;
        Ok(())
    }

    /// An insert of the row with key `key`.
    pub(crate) fn insert(&mut self, rel: u32, key: Vec<Value>, new: Tuple) -> Offer {
        let t = self.table(rel);
        let next = match t.current(&key) {
            (_, None) => Net::Insert(compact(new)),
            (_, Some(Net::Delete(_))) => Net::Replace(compact(new)),
            // The row is there already: the insert fails as it would have.
            (_, Some(_)) => return Err(new),
        };
        let n = size(next_tuple(&next)) + size(&key);
        t.set(key, Some(next));
        self.taken(n)
    }

    /// An update (its key unchanged) of the row with key `key`.
    pub(crate) fn update(&mut self, rel: u32, key: Vec<Value>, new: Tuple) -> Offer {
        let t = self.table(rel);
        let next = match t.current(&key) {
            (false, _) => Net::Update(compact(new)),
            // Deleted (or inserted and deleted) in this batch: the update finds no row.
            (true, None | Some(Net::Delete(_))) => return Err(new),
            (true, Some(Net::Insert(base))) => Net::Insert(compact(merge(base, new))),
            (true, Some(Net::Replace(base))) => Net::Replace(compact(merge(base, new))),
            (true, Some(Net::Update(base))) => Net::Update(compact(merge(base, new))),
        };
        let n = size(next_tuple(&next)) + size(&key);
        t.set(key, Some(next));
        self.taken(n)
    }

    /// A delete of the row with key `key` (`old`: the key tuple).
    pub(crate) fn delete(&mut self, rel: u32, key: Vec<Value>, old: Tuple) -> Offer {
        let n = size(&old) + size(&key);
        let t = self.table(rel);
        let next = match t.current(&key) {
            (false, _) | (true, Some(Net::Update(_) | Net::Replace(_))) => {
                Some(Net::Delete(compact(old)))
            }
            // Inserted in this batch: nothing left to do.
            (true, Some(Net::Insert(_))) => None,
            // Deleted already: the delete finds no row.
            (true, None | Some(Net::Delete(_))) => return Err(old),
        };
        t.set(key, next);
        self.taken(n)
    }

    /// Empties the buffer: each table's statements, in the order tables were first changed.
    /// `set_columns` says which columns an update of a table sets (of those it did not leave
    /// unchanged).
    pub(crate) fn take(
        &mut self,
        set_columns: impl Fn(u32, &Tuple) -> Vec<usize>,
    ) -> Vec<(u32, Flush)> {
        self.bytes = 0;
        std::mem::take(&mut self.tables)
            .into_iter()
            .map(|(rel, t)| (rel, t.flush(|row| set_columns(rel, row))))
            .collect()
    }

    /// Takes one table's buffered changes (none: it has none).
    pub(crate) fn take_table(
        &mut self,
        rel: u32,
        set_columns: impl Fn(&Tuple) -> Vec<usize>,
    ) -> Option<Flush> {
        let at = self.tables.iter().position(|(r, _)| *r == rel)?;
        let (_, t) = self.tables.remove(at);
        // (What it held was counted once per change offered: at least what is left.)
        self.bytes = self.bytes.saturating_sub(t.bytes());
        Some(t.flush(set_columns))
    }
}

impl TableChanges {
    /// Whether the batch has seen the row with `key`, and its net change (none: inserted and
    /// deleted again).
    fn current(&self, key: &[Value]) -> (bool, Option<&Net>) {
        match self.index.get(key) {
            Some(&i) => (true, self.rows[i].as_ref()),
            None => (false, None),
        }
    }

    /// Records the row's net change.
    fn set(&mut self, key: Vec<Value>, next: Option<Net>) {
        match self.index.get(&key) {
            Some(&i) => self.rows[i] = next,
            None => {
                // (Copied: a slice of the message would keep its whole block.)
                self.index.insert(compact(key), self.rows.len());
                self.rows.push(next);
            }
        }
    }

    /// About the memory its rows and keys take.
    fn bytes(&self) -> usize {
        let rows = self.rows.iter().flatten().map(next_tuple).chain(&self.appended);
        rows.chain(self.index.keys()).map(size).sum()
    }

    fn flush(self, set_columns: impl Fn(&Tuple) -> Vec<usize>) -> Flush {
        let mut f = Flush::default();
        for net in self.rows.into_iter().flatten() {
            match net {
                Net::Insert(row) => f.inserts.push(row),
                Net::Delete(key) => f.deletes.push(key),
                Net::Replace(row) => {
                    f.deletes.push(row.clone());
                    f.inserts.push(row);
                }
                Net::Update(row) => {
                    let set = set_columns(&row);
                    if set.is_empty() {
                        continue;
                    }
                    match f.updates.iter_mut().find(|(s, _)| *s == set) {
                        Some((_, rows)) => rows.push(row),
                        None => f.updates.push((set, vec![row])),
                    }
                }
            }
        }
        f.inserts.extend(self.appended);
        f
    }
}

fn next_tuple(n: &Net) -> &Tuple {
    match n {
        Net::Insert(t) | Net::Update(t) | Net::Delete(t) | Net::Replace(t) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Value::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(id: &str, note: &str) -> Tuple {
        vec![v(id), v(note)]
    }

    fn key(id: &str) -> Vec<Value> {
        vec![v(id)]
    }

    fn all_but_key(_: u32, r: &Tuple) -> Vec<usize> {
        (1..r.len()).filter(|&i| r[i] != Value::Unchanged).collect()
    }

    #[test]
    fn a_row_inserted_updated_deleted_and_inserted_again_ends_as_one_insert_of_its_last_version() {
        let mut b = Batch::default();
        b.insert(1, key("1"), row("1", "a")).unwrap();
        assert_eq!(b.update(1, key("1"), row("1", "b")), Ok(()));
        assert_eq!(b.update(1, key("1"), row("1", "c")), Ok(()));
        assert_eq!(b.delete(1, key("1"), vec![v("1"), Value::Null]), Ok(()));
        assert_eq!(b.insert(1, key("1"), row("1", "d")), Ok(()));
        assert_eq!(b.update(1, key("1"), row("1", "e")), Ok(()));
        let f = b.take(all_but_key);
        assert_eq!(
            f,
            vec![(1, Flush { deletes: vec![], updates: vec![], inserts: vec![row("1", "e")] })]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_row_that_was_there_and_is_deleted_then_inserted_is_replaced() {
        let mut b = Batch::default();
        b.update(1, key("1"), row("1", "b")).unwrap();
        b.delete(1, key("1"), vec![v("1"), Value::Null]).unwrap();
        b.insert(1, key("1"), row("1", "c")).unwrap();
        let f = b.take(all_but_key);
        assert_eq!(f[0].1.deletes, vec![row("1", "c")]);
        assert_eq!(f[0].1.inserts, vec![row("1", "c")]);
        assert!(f[0].1.updates.is_empty());
    }

    #[test]
    fn hot_rows_cost_one_update_each_and_unchanged_values_keep_the_earlier_ones() {
        let mut b = Batch::default();
        for i in 0..100 {
            b.update(1, key("7"), row("7", &i.to_string())).unwrap();
            b.update(1, key("8"), vec![v("8"), Value::Unchanged, v(&i.to_string())]).unwrap();
        }
        b.update(1, key("8"), vec![v("8"), v("x"), Value::Unchanged]).unwrap();
        let f = b.take(|_, r| (1..r.len()).filter(|&i| r[i] != Value::Unchanged).collect());
        let updates = &f[0].1.updates;
        assert_eq!(updates.len(), 2, "grouped by the columns set: {updates:?}");
        assert_eq!(updates[0], (vec![1], vec![row("7", "99")]));
        assert_eq!(updates[1], (vec![1, 2], vec![vec![v("8"), v("x"), v("99")]]));
    }

    #[test]
    fn changes_the_buffer_cannot_hold_are_refused_and_leave_it_as_it_was() {
        let mut b = Batch::default();
        b.insert(1, key("1"), row("1", "a")).unwrap();
        assert_eq!(b.insert(1, key("1"), row("1", "b")), Err(row("1", "b")), "duplicate insert");
        b.delete(1, key("2"), vec![v("2"), Value::Null]).unwrap();
        assert!(b.update(1, key("2"), row("2", "x")).is_err(), "update of a deleted row");
        assert!(b.delete(1, key("2"), vec![v("2"), Value::Null]).is_err());
        b.insert(1, key("3"), row("3", "a")).unwrap();
        b.delete(1, key("3"), vec![v("3"), Value::Null]).unwrap();
        assert!(b.update(1, key("3"), row("3", "x")).is_err(), "inserted and deleted");
        assert!(b.delete(1, key("3"), vec![v("3"), Value::Null]).is_err());
        let f = b.take(all_but_key);
        assert_eq!(f[0].1.inserts, vec![row("1", "a")]);
        assert_eq!(f[0].1.deletes, vec![vec![v("2"), Value::Null]]);
    }

    #[test]
    fn one_tables_changes_are_taken_alone_and_the_others_stay() {
        let mut b = Batch::default();
        b.insert(1, key("1"), row("1", "a")).unwrap();
        b.append(2, row("x", "1")).unwrap();
        let f = b.take_table(2, |_| vec![]).unwrap();
        assert_eq!(f.inserts, vec![row("x", "1")]);
        assert!(b.take_table(2, |_| vec![]).is_none());
        assert!(!b.is_empty());
        assert_eq!(b.take(all_but_key)[0].1.inserts, vec![row("1", "a")]);
        assert!(b.is_empty());
    }

    #[test]
    fn inserts_into_tables_without_a_key_keep_their_order_after_the_keyed_ones() {
        let mut b = Batch::default();
        b.append(2, row("x", "1")).unwrap();
        b.append(2, row("x", "2")).unwrap();
        b.insert(1, key("1"), row("1", "a")).unwrap();
        let f = b.take(all_but_key);
        assert_eq!(f.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(f[0].1.inserts, vec![row("x", "1"), row("x", "2")]);
        assert_eq!(b.bytes, 0);
    }
}
