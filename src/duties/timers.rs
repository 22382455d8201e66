//! Firing timers, on the group's leader only.
//!
//! Time enters the machines only through the log, so a timer falls due when the group's
//! leader sees `next_deadline()` pass on its own clock and proposes `Fire` for it, here
//! only: a node that lost the lead must not have its timers written by its successor. A
//! duplicate, early or late `Fire` is a no-op in the machine, so a change of leader that
//! makes two nodes fire the same timer is harmless.

use std::time::Duration;

use pkd_raft::{Action, StateMachine, Timer};

use super::{Duty, Step};
use crate::clock::wall_clock;
use crate::replication::consensus::GroupId;
use crate::replication::error::ProposeError;
use crate::replication::node::Node;
use crate::replication::replica::ReplicaHandle;

/// The timer duty of one group, whose machine is an `M`.
pub struct Timers<M> {
    node: Node,
    group: GroupId,
    replica: ReplicaHandle<M>,
}

impl<M: StateMachine> Timers<M> {
    /// The timers of the group `replica` belongs to.
    pub fn new(node: &Node, replica: &ReplicaHandle<M>) -> Timers<M> {
        Timers { node: node.clone(), group: replica.group(), replica: replica.clone() }
    }

    async fn fire_all(&self, timers: Vec<Timer>) -> Result<(), ProposeError> {
        for timer in timers {
            let response = self.node.propose_here(self.group, Action::Fire(timer)).await?;
            tracing::debug!(group = %self.group, ?timer, ?response, "timer fired");
        }
        Ok(())
    }
}

impl<M: StateMachine + Send + Sync + 'static> Duty for Timers<M> {
    fn name(&self) -> &'static str {
        "timers"
    }

    async fn step(&mut self) -> Step {
        // The log's time may be ahead of this node's clock (a previous leader's clock ran
        // fast): what the machine already considers due fires now, not once this clock
        // catches up.
        let (now, due, next) = self.replica.read(|machine| {
            let now = wall_clock().max(machine.now());
            (now, machine.due_timers(now), machine.next_deadline())
        });
        if due.is_empty() {
            // One millisecond more: the deadline is due at, not before, its time.
            return Step::Idle(next.map(|deadline| duration_ms(deadline.since(now) + 1)));
        }
        match self.fire_all(due).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::debug!(group = %self.group, %error, "firing timers failed; retrying");
                Step::Failed
            }
        }
    }
}

fn duration_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
