//! The shell script that runs one phase: its commands (and `finally`)
//! in order until one fails, the failing command recorded for the report,
//! and with version 0.2 the environment and working directory carried to
//! the next phase.

use kiln_sandbox::tool::quote;

use crate::buildspec::{Buildspec, Phase};
use crate::run::{SRC_DIR, STATE_DIR};

/// The script that runs one phase.
pub(crate) fn script(spec: &Buildspec, phase: &Phase, succeeding: bool) -> String {
    let shared = spec.shared_shell();
    let mut s = String::new();
    s.push_str("set -a\n");
    if shared {
        s.push_str(&format!(
            "if [ -f {STATE_DIR}/env ]; then . {STATE_DIR}/env; fi\n\
             if [ -f {STATE_DIR}/cwd ]; then cd \"$(cat {STATE_DIR}/cwd)\" 2>/dev/null || cd {SRC_DIR}; fi\n"
        ));
    }
    s.push_str(&format!(
        "CODEBUILD_BUILD_SUCCEEDING={}\nrm -f {STATE_DIR}/result {STATE_DIR}/done\n__kiln_rc=0\n",
        u8::from(succeeding)
    ));
    for (block, commands) in [("commands", &phase.commands), ("finally", &phase.finally)] {
        if block == "finally" {
            s.push_str("__kiln_rc=0\n");
        }
        for (i, cmd) in commands.iter().enumerate() {
            let run = if shared {
                format!("eval {}", quote(cmd))
            } else {
                format!("( eval {} )", quote(cmd))
            };
            s.push_str(&format!(
                "if [ \"$__kiln_rc\" -eq 0 ]; then\n\
                 printf '%s\\n' {}\n\
                 {run}\n\
                 __kiln_rc=$?\n\
                 if [ \"$__kiln_rc\" -ne 0 ] && [ ! -f {STATE_DIR}/result ]; then printf '%s %s %s\\n' {block} {i} \"$__kiln_rc\" > {STATE_DIR}/result; fi\n\
                 fi\n",
                quote(&format!("[Container] Running command {cmd}")),
            ));
        }
    }
    s.push_str("unset __kiln_rc\n");
    if shared {
        s.push_str(&format!(
            "export -p > {STATE_DIR}/env.new && mv {STATE_DIR}/env.new {STATE_DIR}/env\n\
             pwd > {STATE_DIR}/cwd\n"
        ));
    }
    for var in &spec.env.exported_variables {
        s.push_str(&format!(
            "if [ -n \"${{{var}+x}}\" ]; then printf '%s' \"${var}\" > {STATE_DIR}/exported/{var}; fi\n"
        ));
    }
    s.push_str(&format!("echo ok > {STATE_DIR}/done\n"));
    s
}
