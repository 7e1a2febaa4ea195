//! The per-CPU `counters` array's indexes (offheap.h, `enum counter`) and
//! their names in reports and metrics.

/// Indexes into the per-CPU `counters` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    AllocsFull = 0,
    StackStatsFull = 1,
    StackIdFailed = 2,
    InflightFull = 3,
    EventsLost = 4,
    FreeUnknown = 5,
    ReadFailed = 6,
    FaultStatsFull = 7,
    OomKills = 8,
    HistFull = 9,
    TargetsFull = 10,
    NewUnfinished = 11,
    WorkUnlinked = 12,
    VmaBusy = 13,
}

pub const COUNTER_MAX: u32 = 14;

impl Counter {
    pub const ALL: [Counter; COUNTER_MAX as usize] = [
        Counter::AllocsFull,
        Counter::StackStatsFull,
        Counter::StackIdFailed,
        Counter::InflightFull,
        Counter::EventsLost,
        Counter::FreeUnknown,
        Counter::ReadFailed,
        Counter::FaultStatsFull,
        Counter::OomKills,
        Counter::HistFull,
        Counter::TargetsFull,
        Counter::NewUnfinished,
        Counter::WorkUnlinked,
        Counter::VmaBusy,
    ];

    /// Name used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::AllocsFull => "allocs_map_full",
            Counter::StackStatsFull => "stack_stats_map_full",
            Counter::StackIdFailed => "stack_id_failed",
            Counter::InflightFull => "inflight_map_full",
            Counter::EventsLost => "events_lost",
            Counter::FreeUnknown => "free_of_untracked",
            Counter::ReadFailed => "user_read_failed",
            Counter::FaultStatsFull => "fault_stats_map_full",
            Counter::OomKills => "oom_kills",
            Counter::HistFull => "histogram_map_full",
            Counter::TargetsFull => "targets_map_full",
            Counter::NewUnfinished => "operator_new_unfinished",
            Counter::WorkUnlinked => "threadpool_work_unlinked",
            Counter::VmaBusy => "walker_vma_lock_busy",
        }
    }

    /// Whether the counter means data was lost (as opposed to informational).
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Counter::FreeUnknown
                | Counter::OomKills
                | Counter::NewUnfinished
                | Counter::WorkUnlinked
                | Counter::VmaBusy
        )
    }
}
