//! The names kiln.yaml gives the AWS resources. Everything the stacks
//! name themselves (group, launch template, target group, pipeline) is read
//! back from the stacks' resources by logical id, so that these follow
//! kiln-synth without a second copy of its naming.

use kiln_pipeline::Config;
use kiln_synth::Stack;

#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    /// kiln.yaml's version.parameter: the version step keeps it.
    pub version_parameter: String,
    /// retention.keep_images.
    pub keep_images: usize,
}

impl Names {
    pub fn new(config: &Config) -> Option<Names> {
        let aws = config.aws.as_ref()?;
        Some(Names {
            prefix: aws.prefix.clone(),
            version_parameter: config.version.parameter.clone(),
            keep_images: config.keep_images,
        })
    }

    pub fn stack(&self, s: Stack) -> String {
        s.name(&self.prefix)
    }

    /// The SSM parameter the image stack writes the AMI id to.
    pub fn ami_parameter(&self) -> String {
        kiln_synth::ami_parameter(&self.prefix)
    }

    /// The EC2 filter that finds this pipeline's AMIs and snapshots.
    pub fn tag_filter(&self) -> (String, String) {
        (
            format!("tag:{}", kiln_synth::PIPELINE_TAG),
            self.prefix.clone(),
        )
    }
}

/// Logical ids in the synthesized templates.
pub mod logical {
    pub const ARTIFACT_BUCKET: &str = "ArtifactBucket";
    pub const PIPELINE: &str = "Pipeline";
    pub const GROUP: &str = "Group";
    pub const LAUNCH_TEMPLATE: &str = "LaunchTemplate";
    pub const TARGET_GROUP: &str = "TargetGroup";
}
