//! One execution, stage by stage. It runs on a blocking thread; the
//! database records every transition, so that a restarted daemon knows
//! where each execution stopped.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::db::Db;
use crate::model::{Execution, ExecutionStatus, STAGES, StageStatus};
use crate::stage_error::StageError;
use crate::stages::{Env, Outcome, Run, StageLog};

pub fn log_path(env: &Env, e: &Execution, stage: &str) -> PathBuf {
    env.execution_dir(&e.pipeline, &e.id)
        .join(format!("{stage}.log"))
}

/// Removes a directory kiln can do without (a checkout, a staging copy, a
/// cut-off build): a failure costs only disk space, so it is logged with
/// the path and the work goes on.
pub(crate) fn remove_leftover(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover directory");
    }
}

fn lock(db: &Mutex<Db>) -> std::sync::MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

/// What executions share with the daemon: the database, and the
/// pipelines being destroyed.
pub struct Shared {
    pub db: Mutex<Db>,
    pub cancelled: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    /// The pipeline is being destroyed: its execution stops before the
    /// next stage.
    pub fn cancelled(&self, pipeline: &str) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(pipeline)
    }

    pub fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        lock(&self.db)
    }
}

/// Runs execution `id` from its first stage that has not succeeded.
pub fn execute(env: &Env, control: &Shared, id: &str) {
    if let Err(e) = try_execute(env, control, id) {
        tracing::error!(execution = id, error = %e, "execution could not run");
        if let Err(e2) = control
            .db()
            .set_execution(id, ExecutionStatus::Failed, &e.to_string())
        {
            // It stays as it was on record; the next daemon start marks an
            // execution cut off in progress as failed.
            tracing::error!(execution = id, error = %e2, "the execution's failure could not be recorded");
        }
    }
}

fn try_execute(env: &Env, control: &Shared, id: &str) -> Result<(), crate::db::DbError> {
    if !control.db().claim(id)? {
        return Ok(());
    }
    let execution = control.db().execution(id)?;
    let pipeline = control.db().pipeline(&execution.pipeline)?;
    let dir = env.execution_dir(&pipeline.name, &execution.id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        control.db().set_execution(
            id,
            ExecutionStatus::Failed,
            &format!("{}: {e}", dir.display()),
        )?;
        return Ok(());
    }
    let mut run = Run {
        env,
        pipeline: &pipeline,
        execution: &execution,
        dir,
        vars: execution.variables.clone(),
        out: execution.outputs.clone(),
        config: None,
    };
    let first = execution
        .stages
        .iter()
        .position(|s| !matches!(s.status, StageStatus::Succeeded | StageStatus::Skipped))
        .unwrap_or(STAGES.len());
    let mut skip_rest: Option<String> = None;
    for (i, stage) in STAGES.iter().enumerate().skip(first) {
        if control.cancelled(&pipeline.name) {
            return stop(
                control,
                &execution,
                i,
                ExecutionStatus::Stopped,
                "the pipeline is being destroyed",
            );
        }
        if i > 0
            && i < STAGES.len() - 1
            && let Some(newer) = newer_waiting(control, &mut run)?
        {
            return stop(
                control,
                &execution,
                i,
                ExecutionStatus::Superseded,
                &format!("superseded by execution #{newer}, before stage {stage}"),
            );
        }
        if let Some(why) = &skip_rest {
            control
                .db()
                .set_stage(id, stage, StageStatus::Skipped, why)?;
            continue;
        }
        control
            .db()
            .set_stage(id, stage, StageStatus::InProgress, "")?;
        let path = log_path(env, &execution, stage);
        let retried = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        let mut log = StageLog::open(path.clone());
        if retried {
            log.line(&format!(
                "retry: stage {stage} runs again; the earlier attempt's log is above"
            ));
        }
        let result = match *stage {
            "Source" => run.source(&mut log),
            "Build" => run.build(&path),
            "Version" => match only_if_changed(control, &mut run) {
                Ok(Some(why)) => {
                    log.line(&why);
                    skip_rest = Some(why.clone());
                    Ok(Outcome::Skipped(why))
                }
                Ok(None) => run.version(&mut log),
                Err(e) => Err(e),
            },
            "Bake" => run.bake(&mut log),
            _ => run.deploy(&mut log),
        };
        control.db().set_outputs(id, &run.vars, &run.out)?;
        if *stage == "Source" && result.is_ok() {
            // Triggers and settings follow kiln.yaml as the branch has it now.
            let file = run.dir.join("source").join(&pipeline.file);
            if let Ok(text) = std::fs::read_to_string(file) {
                control.db().set_pipeline_config(&pipeline.name, &text)?;
            }
        }
        match result {
            Ok(Outcome::Done(summary)) => {
                log.line(&format!("stage {stage} succeeded: {summary}"));
                control
                    .db()
                    .set_stage(id, stage, StageStatus::Succeeded, &summary)?;
            }
            Ok(Outcome::Skipped(why)) => {
                control
                    .db()
                    .set_stage(id, stage, StageStatus::Skipped, &why)?;
            }
            Err(error) => {
                tracing::warn!(pipeline = %pipeline.name, execution = %id, stage, error = &error as &dyn std::error::Error, "stage failed");
                // Files in the checkout are named as the repository has them.
                let message = error.to_string();
                let checkout = format!("{}/", run.dir.join("source").display());
                let message = message.replace(&checkout, "");
                let mut log = StageLog::open(path);
                log.line(&format!("stage {stage} failed: {message}"));
                control
                    .db()
                    .set_stage(id, stage, StageStatus::Failed, &message)?;
                return stop(
                    control,
                    &execution,
                    i + 1,
                    ExecutionStatus::Failed,
                    &format!("stage {stage} failed: {message}"),
                );
            }
        }
    }
    // Before the execution reads as Succeeded: whoever sees it finished
    // sees the images retention keeps, not those it is about to remove.
    retention(env, &run);
    control
        .db()
        .set_execution(id, ExecutionStatus::Succeeded, "")?;
    // Only the latest execution's failure can be retried, as in
    // CodePipeline; the checkouts kept for older ones can go, and so can
    // this one's.
    remove_leftover(&run.dir.join("source"));
    for older in control.db().executions(Some(&pipeline.name), 1000)? {
        if older.seq < execution.seq && older.status.is_final() {
            remove_leftover(&env.execution_dir(&pipeline.name, &older.id).join("source"));
        }
    }
    Ok(())
}

/// Ends the execution with `status`; stages from `from` on were not run.
fn stop(
    control: &Shared,
    e: &Execution,
    from: usize,
    status: ExecutionStatus,
    reason: &str,
) -> Result<(), crate::db::DbError> {
    let db = control.db();
    for stage in STAGES.iter().skip(from) {
        db.set_stage(&e.id, stage, StageStatus::Cancelled, "")?;
    }
    db.set_execution(&e.id, status, reason)
}

/// In SUPERSEDED mode (this execution's kiln.yaml says), a newer
/// execution waiting for the same pipeline.
fn newer_waiting(control: &Shared, run: &mut Run) -> Result<Option<i64>, crate::db::DbError> {
    let mode = run
        .config()
        .map(|c| c.execution_mode)
        .unwrap_or(crate::config::ExecutionMode::Superseded);
    if mode != crate::config::ExecutionMode::Superseded {
        return Ok(None);
    }
    let e = run.execution;
    Ok(control
        .db()
        .executions_with_status(ExecutionStatus::Pending)?
        .into_iter()
        .filter(|p| p.pipeline == e.pipeline && p.seq > e.seq)
        .map(|p| p.seq)
        .max())
}

/// triggers.only_if_changed: why the rest is skipped, if nothing the bake
/// depends on changed since an execution that baked it.
fn only_if_changed(control: &Shared, run: &mut Run) -> Result<Option<String>, StageError> {
    let wanted = run.config()?.triggers.only_if_changed && !run.out.force;
    let earlier = control.db().executions(Some(&run.pipeline.name), 100)?;
    // The digest is recorded either way, for the next execution to compare.
    let since = run.unchanged_since(&earlier)?;
    Ok(match since {
        Some(seq) if wanted => Some(format!(
            "only_if_changed: nothing the bake depends on changed since execution #{seq} ({})",
            run.out.inputs_digest
        )),
        _ => None,
    })
}

/// retention.keep_images: the newest images of this pipeline's recipe,
/// plus those of every group's current and previous template version.
fn retention(env: &Env, run: &Run) {
    let Some(config) = &run.config else { return };
    match prune_images(env, &config.image.name, config.keep_images) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(pipeline = %run.pipeline.name, ?removed, "retention removed images");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            pipeline = %run.pipeline.name,
            image = %config.image.name,
            error = %e,
            "retention removed nothing"
        ),
    }
}

/// Removes the images named `name` beyond the newest `keep`, except those
/// a group runs or may roll back to, and returns their references. When
/// the fleet's database cannot say which images are in use, nothing is
/// removed: an empty answer would mean "none", and a group's rollback
/// image would go.
pub(crate) fn prune_images(
    env: &Env,
    name: &str,
    keep: usize,
) -> Result<Vec<String>, crate::PipelineError> {
    use crate::PipelineError;
    let images = env.state.join("images");
    let store = kiln_image::Store::open(&images)
        .map_err(|e| PipelineError::Io(format!("{}: {e}", images.display())))?;
    let _lock = store
        .lock()
        .map_err(|e| PipelineError::Io(format!("{}: {e}", images.display())))?;
    // Read under the store lock, so that what it says still holds while
    // images are removed.
    let in_use = env
        .fleet
        .images_in_use()
        .map_err(|source| PipelineError::InUse {
            image: name.to_string(),
            source,
        })?;
    Ok(
        kiln_image::gc::collect(&store, keep, Some(name), &in_use, false)
            .map_err(|e| PipelineError::Io(format!("{}: {e}", images.display())))?
            .images,
    )
}

#[cfg(test)]
mod tests;
