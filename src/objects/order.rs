//! Creation order: a topological order over [`SchemaObject::depends_on`], deterministic, with
//! pre-data objects before post-data ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{ObjectKey, ObjectKind, SchemaObject, Section};

/// The objects cannot be ordered: they depend on each other in a cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", describe(.cycle))]
pub struct OrderError {
    /// The objects of the cycle, each depending on the next; the last depends on the first.
    pub cycle: Vec<ObjectKey>,
}

fn describe(cycle: &[ObjectKey]) -> String {
    let mut parts: Vec<String> = cycle.iter().map(ToString::to_string).collect();
    if let Some(first) = cycle.first() {
        parts.push(first.to_string());
    }
    parts.join(" → ")
}

/// Each object's dependencies, as indices (unknown keys and self-references left out).
fn dependency_indices(objects: &[SchemaObject]) -> Vec<Vec<usize>> {
    let mut index: HashMap<&ObjectKey, usize> = HashMap::with_capacity(objects.len());
    for (i, o) in objects.iter().enumerate() {
        index.entry(&o.key).or_insert(i);
    }
    objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            o.depends_on.iter().filter_map(|k| index.get(k).copied()).filter(|&j| j != i).collect()
        })
        .collect()
}

/// The section each object is created in: its own, except that post-data objects that a
/// pre-data object needs (directly or not), such as a primary key a view's `GROUP BY` relies
/// on, move to pre-data.
pub fn effective_sections(objects: &[SchemaObject]) -> Vec<Section> {
    effective(objects, &dependency_indices(objects))
}

fn effective(objects: &[SchemaObject], deps: &[Vec<usize>]) -> Vec<Section> {
    let mut sections: Vec<Section> = objects.iter().map(|o| o.section).collect();
    let mut stack: Vec<usize> =
        (0..objects.len()).filter(|&i| sections[i] == Section::PreData).collect();
    let mut seen = vec![false; objects.len()];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        sections[i] = Section::PreData;
        stack.extend(deps[i].iter().copied().filter(|&j| !seen[j]));
    }
    sections
}

/// A creation order (indices into `objects`): every object after the objects it depends on,
/// pre-data before post-data (except post-data objects a pre-data object needs, see
/// [`effective_sections`]), ties broken by (kind, key) so that the same input always gives the
/// same order. Dependencies on keys not in `objects` are ignored. Errors on a cycle, naming it.
pub fn creation_order(objects: &[SchemaObject]) -> Result<Vec<usize>, OrderError> {
    let deps = dependency_indices(objects);
    let sections = effective(objects, &deps);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); objects.len()];
    let mut waiting: Vec<usize> = vec![0; objects.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &j in ds {
            dependents[j].push(i);
        }
        waiting[i] = ds.len();
    }
    type Rank<'a> = Reverse<(Section, ObjectKind, &'a ObjectKey, usize)>;
    let rank =
        |i: usize| -> Rank<'_> { Reverse((sections[i], objects[i].key.kind, &objects[i].key, i)) };
    let mut ready: BinaryHeap<Rank<'_>> =
        (0..objects.len()).filter(|&i| waiting[i] == 0).map(rank).collect();
    let mut order = Vec::with_capacity(objects.len());
    while let Some(Reverse((_, _, _, i))) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(rank(d));
            }
        }
    }
    if order.len() == objects.len() {
        return Ok(order);
    }
    Err(OrderError { cycle: find_cycle(objects, &deps, &waiting) })
}

/// A cycle among the objects still waiting (each of them waits on another waiting one).
fn find_cycle(objects: &[SchemaObject], deps: &[Vec<usize>], waiting: &[usize]) -> Vec<ObjectKey> {
    let blocked = |i: usize| waiting[i] > 0;
    // Start from the smallest blocked key, and follow the smallest blocked dependency until a
    // node repeats: the repeated stretch is a cycle.
    let Some(start) = (0..objects.len()).filter(|&i| blocked(i)).min_by_key(|&i| &objects[i].key)
    else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut position: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let Some(next) =
            deps[current].iter().copied().filter(|&j| blocked(j)).min_by_key(|&j| &objects[j].key)
        else {
            return path.iter().map(|&i| objects[i].key.clone()).collect();
        };
        if let Some(&at) = position.get(&next) {
            return path[at..].iter().map(|&i| objects[i].key.clone()).collect();
        }
        position.insert(next, path.len());
        path.push(next);
        current = next;
    }
}
