//! The same-VM facts: which domains are one VM (block-common.sh's
//! same_vm), from their `vm` and `target` nodes, believed only when dom0
//! owns them (under xend a guest owns its home and could write them to
//! pass as another VM). Reading the nodes with their owners, judging the
//! trust, and the comparison.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::store::{wire, Reply, Request, Store};

/// What the same-VM test needs of a domain: its trusted nodes only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomVm {
    /// `/local/domain/D/vm`.
    pub vm: Option<String>,
    /// The `vm` of `/local/domain/D/target`, for a stub domain.
    pub target_vm: Option<String>,
    /// Why nodes that exist were not trusted, as clauses for a sentence.
    pub untrusted: Vec<String>,
}

/// A node as read for the trust decision: its value, and the domain that
/// owns it (the first entry of its permissions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    pub value: Option<String>,
    pub owner: Option<u32>,
}

/// What was read about domain D for the same-VM test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmFacts {
    /// `/local/domain/D/vm`.
    pub vm: Owned,
    /// `/local/domain/D/target`: T, the domain D serves as a stub domain.
    pub target: Owned,
    /// `/local/domain/T/vm`.
    pub target_vm: Owned,
    /// `/local/domain/T/image/device-model-domid`, which the toolstack
    /// writes for a stub domain: it must name D.
    pub device_model: Owned,
}

/// A node's value when dom0 owns it; Err(the clause saying why not).
fn trusted(node: &Owned, what: &str) -> Result<Option<String>, String> {
    match (&node.value, node.owner) {
        (None, _) => Ok(None),
        (Some(v), Some(0)) => Ok(Some(v.clone())),
        (Some(_), Some(o)) => Err(format!(
            "{what} is owned by domain {o}, so it is not trusted"
        )),
        (Some(_), None) => Err(format!(
            "{what} has no readable owner, so it is not trusted"
        )),
    }
}

/// Which of domain `d`'s nodes may be believed. A node is trusted only
/// when dom0 owns it (under xend a guest owns its home and could write its
/// own `vm` and `target`); `target` also needs the relation the toolstack
/// writes for a stub domain: the target's `image/device-model-domid`
/// (dom0's too) naming `d`. Untrusted nodes count as missing.
pub fn judge_vm(d: u32, f: &VmFacts) -> DomVm {
    let mut untrusted = Vec::new();
    let vm = trusted(&f.vm, &format!("domain {d}'s vm node")).unwrap_or_else(|why| {
        untrusted.push(why);
        None
    });
    let target = trusted(&f.target, &format!("domain {d}'s target node")).unwrap_or_else(|why| {
        untrusted.push(why);
        None
    });
    let target_vm = target.and_then(|t| {
        let Ok(t) = t.trim().parse::<u32>() else {
            untrusted.push(format!(
                "domain {d}'s target node names no domain, so it is not trusted"
            ));
            return None;
        };
        let dm = format!("domain {t}'s image/device-model-domid");
        let relation = match trusted(&f.device_model, &dm) {
            Ok(Some(v)) => match v.trim().parse::<u32>() {
                Ok(x) if x == d => Ok(()),
                Ok(x) => Err(format!(
                    "domain {d}'s target node names domain {t}, whose device model is \
                     domain {x}, so it is not trusted"
                )),
                Err(_) => Err(format!(
                    "domain {d}'s target node names domain {t}, whose device-model-domid \
                     names no domain, so it is not trusted"
                )),
            },
            Ok(None) => Err(format!(
                "domain {d}'s target node names domain {t}, which has no device-model domain, \
                 so it is not trusted"
            )),
            Err(why) => Err(why),
        };
        if let Err(why) = relation {
            untrusted.push(why);
            return None;
        }
        trusted(&f.target_vm, &format!("domain {t}'s vm node")).unwrap_or_else(|why| {
            untrusted.push(why);
            None
        })
    });
    DomVm {
        vm,
        target_vm,
        untrusted,
    }
}

/// block-common.sh's same_vm: the two are one VM when their `vm` paths, or
/// their targets' `vm` paths, meet. A missing `vm` meets nothing (the stock
/// script let a domain without one share with anybody).
pub fn same_vm(me: &DomVm, other: &DomVm) -> bool {
    let mine = me.vm.as_deref().map(|v| v.strip_suffix("-1").unwrap_or(v));
    // An empty `vm` names no VM either: two guests whose nodes are both
    // empty are not thereby one VM.
    let eq = |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(x), Some(y)) if x == y && !x.is_empty());
    let (tv, ov, otv) = (
        me.target_vm.as_deref(),
        other.vm.as_deref(),
        other.target_vm.as_deref(),
    );
    eq(mine, ov) || eq(tv, ov) || eq(mine, otv) || eq(tv, otv)
}

/// Why two domains that are not the same VM might have been taken for one:
/// the untrusted nodes of either, as one clause; None when none was.
pub fn untrusted_note(me: &DomVm, other: &DomVm) -> Option<String> {
    let all: Vec<&str> = me
        .untrusted
        .iter()
        .chain(other.untrusted.iter().filter(|w| !me.untrusted.contains(w)))
        .map(String::as_str)
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// The nodes of `path` read with their owners, as batch requests.
fn owned_reqs(path: &str) -> [Request<'_>; 2] {
    [Request::Read(path), Request::GetPerms(path)]
}

fn owned(replies: &mut impl Iterator<Item = Reply>) -> Owned {
    let value = replies.next().and_then(Reply::value);
    let owner = replies.next().and_then(|r| wire::perms_owner(&r.list()));
    Owned { value, owner }
}

/// The trusted `vm` (and target's `vm`) of each domain, judged by
/// `judge_vm`, in two round trips (values and owners pipelined together).
pub fn read_vms(store: &Store, doms: &[u32]) -> Result<HashMap<u32, DomVm>> {
    let paths: Vec<[String; 2]> = doms
        .iter()
        .map(|d| {
            [
                format!("/local/domain/{d}/vm"),
                format!("/local/domain/{d}/target"),
            ]
        })
        .collect();
    let reqs: Vec<Request<'_>> = paths
        .iter()
        .flat_map(|[vm, t]| owned_reqs(vm).into_iter().chain(owned_reqs(t)))
        .collect();
    let mut replies = store
        .batch(&reqs)
        .context("reading domains' vm paths")?
        .into_iter();
    let mut facts: Vec<(u32, VmFacts)> = doms
        .iter()
        .map(|d| {
            let vm = owned(&mut replies);
            let target = owned(&mut replies);
            (
                *d,
                VmFacts {
                    vm,
                    target,
                    ..VmFacts::default()
                },
            )
        })
        .collect();
    // Second round: each named target's vm and device-model-domid.
    let named: Vec<(usize, [String; 2])> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, (_, f))| {
            let t = f.target.value.as_deref()?.trim().parse::<u32>().ok()?;
            Some((
                i,
                [
                    format!("/local/domain/{t}/vm"),
                    format!("/local/domain/{t}/image/device-model-domid"),
                ],
            ))
        })
        .collect();
    let reqs: Vec<Request<'_>> = named
        .iter()
        .flat_map(|(_, [vm, dm])| owned_reqs(vm).into_iter().chain(owned_reqs(dm)))
        .collect();
    let mut replies = store
        .batch(&reqs)
        .context("reading target domains' vm paths")?
        .into_iter();
    for (i, _) in &named {
        let target_vm = owned(&mut replies);
        let device_model = owned(&mut replies);
        if let Some((_, f)) = facts.get_mut(*i) {
            f.target_vm = target_vm;
            f.device_model = device_model;
        }
    }
    Ok(facts
        .into_iter()
        .map(|(d, f)| (d, judge_vm(d, &f)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(vm: Option<&str>, t: Option<&str>) -> DomVm {
        DomVm {
            vm: vm.map(String::from),
            target_vm: t.map(String::from),
            untrusted: Vec::new(),
        }
    }

    fn node(value: Option<&str>, owner: Option<u32>) -> Owned {
        Owned {
            value: value.map(String::from),
            owner,
        }
    }

    #[test]
    fn only_dom0_owned_vm_and_target_nodes_are_believed() {
        let dom0 = |v: &str| node(Some(v), Some(0));
        let guest = |v: &str, o: u32| node(Some(v), Some(o));
        let missing = Owned::default();
        // Domain 8; a stub domain's target is 5.
        let stub = VmFacts {
            vm: dom0("/vm/stub"),
            target: dom0("5"),
            target_vm: dom0("/vm/g"),
            device_model: dom0("8"),
        };
        // (facts of domain 8, its trusted vm, its trusted target vm, the
        // words of why a node was not trusted)
        type Case<'a> = (VmFacts, Option<&'a str>, Option<&'a str>, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            // libxl: dom0 owns the nodes.
            (
                VmFacts {
                    vm: dom0("/vm/a"),
                    ..VmFacts::default()
                },
                Some("/vm/a"),
                None,
                &[],
            ),
            (stub.clone(), Some("/vm/stub"), Some("/vm/g"), &[]),
            // xend: the guest owns its home and what is in it.
            (
                VmFacts {
                    vm: guest("/vm/a", 8),
                    ..VmFacts::default()
                },
                None,
                None,
                &["domain 8's vm node is owned by domain 8, so it is not trusted"],
            ),
            // A guest-written target.
            (
                VmFacts {
                    target: guest("5", 8),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 8's target node is owned by domain 8"],
            ),
            // A dom0-owned target without the device-model relation.
            (
                VmFacts {
                    device_model: missing.clone(),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["names domain 5, which has no device-model domain"],
            ),
            (
                VmFacts {
                    device_model: dom0("9"),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["names domain 5, whose device model is domain 9"],
            ),
            (
                VmFacts {
                    device_model: guest("8", 5),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 5's image/device-model-domid is owned by domain 5"],
            ),
            // The target's own vm node, written by the target.
            (
                VmFacts {
                    target_vm: guest("/vm/g", 5),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 5's vm node is owned by domain 5"],
            ),
            (
                VmFacts {
                    target: dom0("five"),
                    ..stub.clone()
                },
                Some("/vm/stub"),
                None,
                &["domain 8's target node names no domain"],
            ),
            // Unreadable permissions are no trust either.
            (
                VmFacts {
                    vm: node(Some("/vm/a"), None),
                    ..VmFacts::default()
                },
                None,
                None,
                &["domain 8's vm node has no readable owner"],
            ),
            // Missing nodes are no finding.
            (VmFacts::default(), None, None, &[]),
        ];
        for (facts, vm, target_vm, why) in cases {
            let got = judge_vm(8, &facts);
            assert_eq!(got.vm.as_deref(), vm, "{facts:?}");
            assert_eq!(got.target_vm.as_deref(), target_vm, "{facts:?}");
            assert_eq!(
                got.untrusted.len(),
                why.len(),
                "{facts:?}: {:?}",
                got.untrusted
            );
            for (g, w) in got.untrusted.iter().zip(why) {
                assert!(g.contains(w), "{g:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn a_guest_that_writes_its_own_target_is_not_its_victims_vm() {
        let victim = judge_vm(
            7,
            &VmFacts {
                vm: node(Some("/vm/victim"), Some(0)),
                ..VmFacts::default()
            },
        );
        let attacker = judge_vm(
            8,
            &VmFacts {
                vm: node(Some("/vm/attacker"), Some(8)),
                target: node(Some("7"), Some(8)),
                target_vm: node(Some("/vm/victim"), Some(0)),
                device_model: Owned::default(),
            },
        );
        assert!(!same_vm(&attacker, &victim));
        assert!(!same_vm(&victim, &attacker));
        let why = untrusted_note(&attacker, &victim).expect("a reason");
        assert!(
            why.contains("domain 8's target node is owned by domain 8"),
            "{why}"
        );
        assert_eq!(untrusted_note(&victim, &victim), None);
    }

    #[test]
    fn same_vm_rules() {
        assert!(same_vm(&d(Some("/vm/a"), None), &d(Some("/vm/a"), None)));
        assert!(!same_vm(&d(Some("/vm/a"), None), &d(Some("/vm/b"), None)));
        // xend's restarted domain: "-1" suffix on ours.
        assert!(same_vm(&d(Some("/vm/a-1"), None), &d(Some("/vm/a"), None)));
        // Stub domain and its guest, either way round.
        assert!(same_vm(
            &d(Some("/vm/stub"), Some("/vm/g")),
            &d(Some("/vm/g"), None)
        ));
        assert!(same_vm(
            &d(Some("/vm/g"), None),
            &d(Some("/vm/stub"), Some("/vm/g"))
        ));
        // Missing vm paths never meet.
        assert!(!same_vm(&d(None, None), &d(None, None)));
        assert!(!same_vm(&d(Some(""), None), &d(Some(""), None)));
        assert!(!same_vm(&d(Some("-1"), None), &d(Some(""), None)));
        assert!(!same_vm(&d(None, Some("")), &d(Some(""), Some(""))));
        assert!(!same_vm(&d(Some("/vm/a"), None), &d(None, None)));
    }
}
