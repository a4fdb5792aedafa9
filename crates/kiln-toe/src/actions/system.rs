//! Assert, Reboot and ExecuteDocument.

use std::time::Duration;

use serde_json::Value;

use super::{ActionError, Ctx, Outputs, fail, output, required, text};
use crate::condition::{self, Expr};
use crate::error::Collector;
use crate::report::Status;
use crate::runner::{InstanceFacts, MAX_NESTING, nested_path};

pub fn assert(ctx: &mut Ctx) -> Result<Outputs, ActionError> {
    let node = ctx
        .step
        .inputs
        .as_ref()
        .ok_or_else(|| fail("Assert needs a condition"))?;
    let mut c = Collector::new(&ctx.document.path);
    let expr: Expr = condition::parse_expr(node, "inputs", &[], 0, &mut c)
        .ok_or_else(|| fail("invalid condition"))?;
    let mut facts = InstanceFacts {
        instance: ctx.run.instance,
        scope: ctx.scope,
    };
    match condition::eval(&expr, &mut facts) {
        Ok(true) => Ok(Vec::new()),
        Ok(false) => Err(fail("the assertion is false")),
        Err(e) => Err(fail(e)),
    }
}

/// In a sandbox every step already starts in fresh namespaces, so a
/// reboot is the delay and a note; the run resumes at the next step, as
/// AWSTOE does after the Reboot module.
pub fn reboot(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let delay = super::items(inputs)
        .first()
        .and_then(|i| text(i, "delaySeconds"))
        .unwrap_or_default();
    let delay: u64 = if delay.is_empty() {
        0
    } else {
        delay
            .parse()
            .map_err(|_| fail(format!("delaySeconds {delay:?} is not a number")))?
    };
    if delay > 0 {
        std::thread::sleep(Duration::from_secs(delay));
    }
    ctx.console("Reboot: restarting the sandbox; the run resumes at the next step");
    Ok(Vec::new())
}

pub fn execute_document(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let item = super::items(inputs)
        .into_iter()
        .next()
        .ok_or_else(|| fail("ExecuteDocument needs inputs"))?;
    let document = required(item, "document")?;
    if document.starts_with("s3://") || document.starts_with("arn:") {
        return Err(fail(format!(
            "{document}: on the local target ExecuteDocument runs documents from local paths"
        )));
    }
    let path = nested_path(&ctx.document.path, &document);
    let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
    if ctx.run.stack.len() > MAX_NESTING {
        return Err(fail(format!(
            "ExecuteDocument nests more than {MAX_NESTING} levels deep"
        )));
    }
    if ctx
        .run
        .stack
        .iter()
        .any(|p| p.canonicalize().unwrap_or_else(|_| p.clone()) == canonical)
    {
        return Err(fail(format!(
            "{} is already running higher up in this chain: a cycle",
            path.display()
        )));
    }
    let doc = crate::parse::load(&path).map_err(|e| fail(e.to_string()))?;
    let phases: Option<Vec<String>> = text(item, "phases")
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.split(',').map(|s| s.trim().to_string()).collect());
    let mut given = Vec::new();
    if let Some(Value::Array(params)) = item.get("parameters") {
        for p in params {
            let (Some(name), Some(value)) = (p.get("name"), p.get("value")) else {
                continue;
            };
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            given.push((name.as_str().unwrap_or_default().to_string(), value));
        }
    }
    crate::runner::variables(&doc, &given).map_err(|e| fail(e.to_string()))?;
    let nested = ctx
        .run
        .execute(std::slice::from_ref(&doc), &given, phases.as_deref());
    let summary = serde_json::to_value(nested.summary()).unwrap_or_default();
    let status = nested.status;
    let message = nested.failure_message.clone();
    ctx.detailed.get_or_insert_with(Vec::new).push(nested);
    if status == Status::Failed {
        return Err(fail(format!("the nested document failed: {message}")));
    }
    let mut out = output("status", summary["status"].clone());
    if let Value::Object(m) = summary {
        out = m;
    }
    Ok(vec![out])
}
