//! Deploy order: packages after the packages they depend on; inside a package
//! types in the order their definitions need, then functions, then views in
//! the order their queries need. Ties keep the input order (file names,
//! package names), so the order is the same on every run and every node.

use std::collections::BTreeSet;

use super::object::{ObjectFile, ObjectKind};

/// Orders `n` items so that each comes after the items in its `after` list
/// (indices); among items that are free to go, the lowest index goes first.
/// On a cycle, returns one cycle as the indices along it (first = last).
pub fn topological(n: usize, after: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut waiting: Vec<usize> = (0..n)
        .map(|i| after[i].iter().filter(|&&d| d != i).count())
        .collect();
    let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in after.iter().enumerate() {
        for &d in deps {
            if d != i {
                unblocks[d].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &unblocks[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every item left waits for another item left: walking back along those
    // edges must come round to an item already seen.
    let left: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] > 0).collect();
    let start = *left.first().expect("some item is left");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = *after[current]
            .iter()
            .find(|d| left.contains(d) && **d != current)
            .expect("an item left waits for another item left");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            // Read as: each item needs the next one, and the last is the first.
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return Err(cycle);
        }
        path.push(next);
        current = next;
    }
}

/// Objects of one kind in the order the server needs them created.
/// `objects` come in file-name order, which breaks ties.
pub enum Ordered {
    /// Every object after the ones it names.
    Sorted(Vec<usize>),
    /// The definitions name each other in a circle (names along it).
    Cycle(Vec<String>),
}

/// Orders objects of one kind by the names their definitions mention.
pub fn objects(objects: &[&ObjectFile]) -> Ordered {
    let after: Vec<Vec<usize>> = objects
        .iter()
        .map(|o| {
            objects
                .iter()
                .enumerate()
                .filter(|(_, other)| o.mentions(&other.name))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    match topological(objects.len(), &after) {
        Ok(order) => Ordered::Sorted(order),
        Err(cycle) => Ordered::Cycle(cycle.iter().map(|&i| objects[i].name.clone()).collect()),
    }
}

/// The deploy order of a package's objects: types, functions, views.
pub struct PackageOrder {
    /// Indices into the package's objects.
    pub order: Vec<usize>,
    /// Routines whose bodies name each other in a circle: they are created
    /// with `check_function_bodies` off, as pg_dump does, since no order
    /// satisfies them all.
    pub routine_cycle: Option<Vec<String>>,
}

/// Orders every object of a package; a cycle among types or views is an
/// error (no such definitions can be created), naming it.
pub fn package(objects: &[ObjectFile]) -> Result<PackageOrder, String> {
    let mut order = Vec::with_capacity(objects.len());
    let mut routine_cycle = None;
    for kind in ObjectKind::ALL {
        let idx: Vec<usize> = (0..objects.len())
            .filter(|&i| objects[i].kind == kind)
            .collect();
        let these: Vec<&ObjectFile> = idx.iter().map(|&i| &objects[i]).collect();
        match self::objects(&these) {
            Ordered::Sorted(o) => order.extend(o.into_iter().map(|k| idx[k])),
            Ordered::Cycle(names) if kind == ObjectKind::Function => {
                routine_cycle = Some(names);
                order.extend(idx);
            }
            Ordered::Cycle(names) => {
                return Err(format!(
                    "{}s name each other in a circle: {}",
                    kind,
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(" → ")
                ))
            }
        }
    }
    Ok(PackageOrder {
        order,
        routine_cycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::object;

    fn obj(kind: ObjectKind, file: &str, body: &str) -> ObjectFile {
        object::parse(kind, file, body.to_string()).unwrap()
    }

    fn names(objects: &[ObjectFile], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| objects[i].name.clone()).collect()
    }

    #[test]
    fn topological_keeps_input_order_on_ties() {
        assert_eq!(topological(3, &[vec![], vec![], vec![]]), Ok(vec![0, 1, 2]));
        assert_eq!(
            topological(3, &[vec![2], vec![], vec![]]),
            Ok(vec![1, 2, 0])
        );
        assert_eq!(
            topological(4, &[vec![3], vec![0], vec![], vec![2]]),
            Ok(vec![2, 3, 0, 1])
        );
        assert_eq!(
            topological(1, &[vec![0]]),
            Ok(vec![0]),
            "self edges ignored"
        );
    }

    #[test]
    fn topological_names_a_cycle() {
        let e = topological(4, &[vec![], vec![2], vec![3], vec![1]]).unwrap_err();
        assert_eq!(e.first(), e.last());
        assert_eq!(e.len(), 4);
        let mut members = e[..3].to_vec();
        members.sort();
        assert_eq!(members, vec![1, 2, 3]);
        // Items downstream of a cycle are not named as part of it.
        let e = topological(3, &[vec![1], vec![2], vec![1]]).unwrap_err();
        assert!(!e.contains(&0), "{e:?}");
    }

    #[test]
    fn types_follow_their_definitions_not_file_names() {
        // File names sort a, b, c, d; the definitions need d, c, b, a (and arrays, domains).
        let objects = vec![
            obj(ObjectKind::Type, "types/a.sql", "CREATE TYPE invoice AS (id int, lines line[], total cents);"),
            obj(ObjectKind::Type, "types/b.sql", "CREATE TYPE line AS (item text, price cents);"),
            obj(ObjectKind::Type, "types/c.sql", "CREATE DOMAIN cents AS amount CHECK (VALUE >= 0);"),
            obj(ObjectKind::Type, "types/d.sql", "CREATE DOMAIN amount AS numeric(12, 2);"),
            obj(ObjectKind::Function, "functions/a.sql", "CREATE FUNCTION total(i invoice) RETURNS cents LANGUAGE sql AS $$ SELECT sum_lines(i.lines) $$;"),
            obj(ObjectKind::Function, "functions/b.sql", "CREATE FUNCTION sum_lines(l line[]) RETURNS cents LANGUAGE sql AS $$ SELECT sum((x).price)::cents FROM unnest(l) x $$;"),
            obj(ObjectKind::View, "views/a.sql", "CREATE VIEW big AS SELECT * FROM every WHERE n > 10;"),
            obj(ObjectKind::View, "views/b.sql", "CREATE VIEW every AS SELECT 1 AS n;"),
        ];
        let o = package(&objects).unwrap();
        assert_eq!(
            names(&objects, &o.order),
            [
                "amount",
                "cents",
                "line",
                "invoice",
                "sum_lines",
                "total",
                "every",
                "big"
            ]
        );
        assert!(o.routine_cycle.is_none());
    }

    #[test]
    fn attribute_named_like_a_type_is_no_dependency() {
        // `line` has an attribute called `invoice`; it does not need the type.
        let objects = vec![
            obj(
                ObjectKind::Type,
                "types/a.sql",
                "CREATE TYPE invoice AS (l line);",
            ),
            obj(
                ObjectKind::Type,
                "types/b.sql",
                "CREATE TYPE line AS (invoice int);",
            ),
        ];
        let o = package(&objects).unwrap();
        assert_eq!(names(&objects, &o.order), ["line", "invoice"]);
    }

    #[test]
    fn type_and_view_cycles_are_errors() {
        let objects = vec![
            obj(ObjectKind::Type, "types/a.sql", "CREATE TYPE a AS (x b);"),
            obj(ObjectKind::Type, "types/b.sql", "CREATE TYPE b AS (y a);"),
        ];
        let e = package(&objects).err().unwrap();
        assert!(
            e.contains("types") && e.contains("`a`") && e.contains("`b`"),
            "{e}"
        );
        let objects = vec![
            obj(
                ObjectKind::View,
                "views/a.sql",
                "CREATE VIEW a AS SELECT * FROM b;",
            ),
            obj(
                ObjectKind::View,
                "views/b.sql",
                "CREATE VIEW b AS SELECT * FROM a;",
            ),
        ];
        assert!(package(&objects).is_err());
    }

    #[test]
    fn mutually_recursive_routines_keep_file_order() {
        let objects = vec![
            obj(ObjectKind::Function, "functions/even.sql", "CREATE FUNCTION is_even(n int) RETURNS bool LANGUAGE sql AS $$ SELECT n = 0 OR is_odd(n - 1) $$;"),
            obj(ObjectKind::Function, "functions/odd.sql", "CREATE FUNCTION is_odd(n int) RETURNS bool LANGUAGE sql AS $$ SELECT n <> 0 AND is_even(n - 1) $$;"),
        ];
        let o = package(&objects).unwrap();
        assert_eq!(o.order, vec![0, 1]);
        assert!(o.routine_cycle.is_some());
    }
}
