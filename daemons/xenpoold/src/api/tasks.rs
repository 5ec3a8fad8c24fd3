//! `Async.*` calls run as tasks; `task.cancel` asks a running one to stop at its next safe
//! point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xenpool_core::{Class, Ref, TaskOperation, TaskRecord, TaskStatus};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::state::now;

/// `TASK_CANCELLED [task]`
pub fn cancelled(task: &Ref) -> XenApiError {
    XenApiError::new("TASK_CANCELLED", [task.as_str()])
}

impl Api {
    pub(super) fn spawn_task(&self, cx: Ctx, req: Request) -> ApiResult {
        let state = &self.node().state;
        let task = state.new_ref();
        let rec = TaskRecord {
            uuid: state.new_uuid(),
            name_label: req.method.clone(),
            name_description: String::new(),
            allowed_operations: vec![TaskOperation::Cancel],
            created: now(),
            status: TaskStatus::Pending,
            resident_on: state.host.clone(),
            ..Default::default()
        };
        state
            .write(|txn| txn.create(task.clone(), rec))
            .map_err(api_error)?;
        let flag = Arc::new(AtomicBool::new(false));
        state
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.clone(), flag);
        let api = self.clone();
        let task2 = task.clone();
        tokio::spawn(async move {
            let mut cx = cx;
            cx.task = Some(task2.clone());
            let sync_req = Request {
                is_async: false,
                ..req
            };
            let result = api.exec(&cx, &sync_req).await;
            api.finish_task(&task2, result);
        });
        Ok(Wire::String(task.as_str().to_string()))
    }

    fn finish_task(&self, task: &Ref, result: ApiResult) {
        let state = &self.node().state;
        let flag = state
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
        let was_cancelled = flag.is_some_and(|f| f.load(Ordering::SeqCst));
        let outcome = state.write(|txn| {
            if !txn.db().exists(Class::Task, task) {
                // Destroyed while running: nothing to report to.
                return Ok(());
            }
            txn.update::<TaskRecord>(task, |t| {
                t.finished = now();
                t.progress = 1.0;
                t.allowed_operations = vec![TaskOperation::Destroy];
                match &result {
                    Ok(v) => {
                        t.status = TaskStatus::Success;
                        t.result = match v {
                            Wire::String(s) if s.is_empty() => String::new(),
                            other => xenpool_rpc::xml::value_to_string(other),
                        };
                    }
                    Err(e) if e.code == "TASK_CANCELLED" || was_cancelled => {
                        t.status = TaskStatus::Cancelled;
                        t.error_info = e.description();
                    }
                    Err(e) => {
                        t.status = TaskStatus::Failure;
                        t.error_info = e.description();
                    }
                }
            })
        });
        if let Err(e) = outcome {
            tracing::warn!(task = %task, error = %e, "could not record the end of a task");
        }
    }

    /// Sets a running task's progress (0.0 to 1.0); harmless when not running as a task.
    pub(crate) fn progress(&self, cx: &Ctx, progress: f64) {
        if let Some(task) = &cx.task {
            let _ = self.node().state.write(|txn| {
                if txn.db().exists(Class::Task, task) {
                    txn.update::<TaskRecord>(task, |t| t.progress = progress)?;
                }
                Ok(())
            });
        }
    }

    /// Fails with `TASK_CANCELLED` if the task this call runs as was cancelled.
    pub(crate) fn check_cancelled(&self, cx: &Ctx) -> Result<(), XenApiError> {
        if let Some(task) = &cx.task {
            let cancels = self
                .node()
                .state
                .cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cancels.get(task).is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Err(cancelled(task));
            }
        }
        Ok(())
    }

    pub(super) fn task_call(&self, _cx: &Ctx, req: &Request) -> Result<Option<Wire>, XenApiError> {
        let state = &self.node().state;
        match req.message.as_str() {
            "cancel" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let task = ref_param(&mut p, "task")?;
                let status = state
                    .db()
                    .get::<TaskRecord>(&task)
                    .map_err(api_error)?
                    .status;
                if status != TaskStatus::Pending {
                    return Err(XenApiError::new(
                        "OPERATION_NOT_ALLOWED",
                        ["task is not pending"],
                    ));
                }
                let flag = state
                    .cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&task)
                    .cloned();
                match flag {
                    Some(f) => f.store(true, Ordering::SeqCst),
                    None => {
                        return Err(XenApiError::new(
                            "OPERATION_NOT_ALLOWED",
                            ["task cannot be cancelled"],
                        ))
                    }
                }
                state
                    .write(|txn| {
                        txn.update::<TaskRecord>(&task, |t| {
                            t.status = TaskStatus::Cancelling;
                            t.allowed_operations.clear();
                        })
                    })
                    .map_err(api_error)?;
                Ok(Some(Wire::String(String::new())))
            }
            "destroy" => self.destroy_call(Class::Task, req),
            "create" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let label = p.string("label")?.to_string();
                let description = p.string("description")?.to_string();
                let task = state.new_ref();
                let rec = TaskRecord {
                    uuid: state.new_uuid(),
                    name_label: label,
                    name_description: description,
                    created: now(),
                    status: TaskStatus::Pending,
                    resident_on: state.host.clone(),
                    allowed_operations: vec![TaskOperation::Cancel],
                    ..Default::default()
                };
                state
                    .write(|txn| txn.create(task.clone(), rec))
                    .map_err(api_error)?;
                Ok(Some(Wire::String(task.as_str().to_string())))
            }
            _ => Ok(None),
        }
    }
}
