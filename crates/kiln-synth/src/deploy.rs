//! The deployment stack: the network (or the one given), the load balancer
//! with `idle_timeout` and its target group carrying `health`,
//! `deregistration_delay` and `routing` as ALB's attributes, the
//! launch template with the seed's tags, and the Auto Scaling group rolled
//! by CloudFormation in batches that wait for each instance to pass its
//! health check before it signals; a batch that does not signal in time
//! fails the update, and CloudFormation rolls the group back.

use kiln_pipeline::config::Network;
use serde_json::{Map, Value, json};

use crate::iam;
use crate::{Ctx, SynthError, iso_duration, resource, secs, sub, sub_escape};

/// The group's deregistration delay and routing as ALB's target group
/// attributes. The algorithm is always given: kiln's default (least
/// outstanding requests) is not ALB's (round robin).
fn target_group_attributes(spec: &kiln_fleet::GroupSpec) -> Value {
    let attribute = |key: &str, value: String| json!({ "Key": key, "Value": value });
    let routing = &spec.routing;
    let mut attributes = vec![
        attribute(
            "deregistration_delay.timeout_seconds",
            secs(spec.deregistration_delay_ms, 0, 3600).to_string(),
        ),
        attribute(
            "load_balancing.algorithm.type",
            kiln_fleet::alb::algorithm_name(routing.algorithm).to_owned(),
        ),
    ];
    if routing.slow_start_ms > 0 {
        attributes.push(attribute(
            "slow_start.duration_seconds",
            secs(routing.slow_start_ms, 30, 900).to_string(),
        ));
    }
    if let Some(ms) = routing.stickiness_ms {
        attributes.push(attribute("stickiness.enabled", "true".into()));
        attributes.push(attribute("stickiness.type", "lb_cookie".into()));
        attributes.push(attribute(
            "stickiness.lb_cookie.duration_seconds",
            secs(ms, 1, 604_800).to_string(),
        ));
    }
    Value::Array(attributes)
}

pub fn template(ctx: &Ctx, warnings: &mut Vec<String>) -> Result<Value, SynthError> {
    let c = ctx.config;
    let d = c
        .deploy
        .as_ref()
        .expect("the deployment stack needs deploy:");
    let spec = &d.spec;
    let p = &ctx.prefix;
    let platform = crate::image::parent(ctx, &c.image.parent)?.platform;
    let mut params = Map::new();
    params.insert(
        "ImageId".into(),
        json!({
            "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
            "Default": ctx.ami_parameter(),
            "Description": "the AMI to roll out: the image stack's parameter",
        }),
    );
    params.insert(
        "Version".into(),
        json!({ "Type": "String", "Default": "0.0.0", "Description": "the image's version, for the instances' tags" }),
    );
    params.insert(
        "SourceCommit".into(),
        json!({ "Type": "String", "Default": "unknown", "Description": "the source revision, for the instances' tags" }),
    );
    let mut r = Map::new();
    let (vpc, subnets) = network(ctx, &mut r);
    r.insert(
        "LoadBalancerSecurityGroup".into(),
        resource(
            "AWS::EC2::SecurityGroup",
            "the load balancer: HTTP from anywhere, out only to the instances",
            json!({
                "GroupDescription": format!("{p} load balancer"),
                "VpcId": vpc,
                "SecurityGroupIngress": [{
                    "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "0.0.0.0/0",
                    "Description": "HTTP from clients",
                }],
                "Tags": ctx.tags(),
            }),
        ),
    );
    r.insert(
        "InstanceSecurityGroup".into(),
        resource(
            "AWS::EC2::SecurityGroup",
            "the instances: reached only from the load balancer",
            json!({
                "GroupDescription": format!("{p} instances"),
                "VpcId": vpc,
                "SecurityGroupIngress": [{
                    "IpProtocol": "tcp", "FromPort": spec.port, "ToPort": spec.port,
                    "SourceSecurityGroupId": { "Ref": "LoadBalancerSecurityGroup" },
                    "Description": "the application's port, from the load balancer",
                }],
                "Tags": ctx.tags(),
            }),
        ),
    );
    r.insert(
        "LoadBalancerEgress".into(),
        resource(
            "AWS::EC2::SecurityGroupEgress",
            "the load balancer may reach the instances' port and nothing else",
            json!({
                "GroupId": { "Ref": "LoadBalancerSecurityGroup" },
                "IpProtocol": "tcp", "FromPort": spec.port, "ToPort": spec.port,
                "DestinationSecurityGroupId": { "Ref": "InstanceSecurityGroup" },
                "Description": "to the instances",
            }),
        ),
    );
    r.insert(
        "LoadBalancer".into(),
        resource(
            "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "the Application Load Balancer in front of the group",
            json!({
                "Name": format!("{p}-alb"),
                "Type": "application",
                "Scheme": "internet-facing",
                "Subnets": subnets,
                "SecurityGroups": [{ "Ref": "LoadBalancerSecurityGroup" }],
                "LoadBalancerAttributes": [
                    { "Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true" },
                    {
                        "Key": "idle_timeout.timeout_seconds",
                        "Value": secs(spec.idle_timeout_ms, 1, 4000).to_string(),
                    },
                ],
                "Tags": ctx.tags(),
            }),
        ),
    );
    let h = &spec.health;
    let interval = secs(h.interval_ms, 5, 300);
    let timeout = secs(h.timeout_ms, 2, 120).min(interval - 1);
    if h.interval_ms < 5000 || h.timeout_ms < 2000 {
        warnings.push(format!(
            "deploy.health: a target group checks every 5s or more slowly, with a timeout of 2s or more; {interval}s and {timeout}s used"
        ));
    }
    let threshold = |n: u32| n.clamp(2, 10);
    if h.healthy_threshold < 2 || h.unhealthy_threshold < 2 {
        warnings.push("deploy.health: a target group's thresholds are 2 to 10".into());
    }
    r.insert(
        "TargetGroup".into(),
        resource(
            "AWS::ElasticLoadBalancingV2::TargetGroup",
            "the group's instances, checked as deploy.health says",
            json!({
                "Name": format!("{p}-tg"),
                "VpcId": vpc,
                "Port": spec.port,
                "Protocol": "HTTP",
                "TargetType": "instance",
                "HealthCheckPath": h.path,
                "HealthCheckIntervalSeconds": interval,
                "HealthCheckTimeoutSeconds": timeout,
                "HealthyThresholdCount": threshold(h.healthy_threshold),
                "UnhealthyThresholdCount": threshold(h.unhealthy_threshold),
                "TargetGroupAttributes": target_group_attributes(spec),
                "Tags": ctx.tags(),
            }),
        ),
    );
    r.insert(
        "Listener".into(),
        resource(
            "AWS::ElasticLoadBalancingV2::Listener",
            "HTTP on port 80, forwarded to the target group",
            json!({
                "LoadBalancerArn": { "Ref": "LoadBalancer" },
                "Port": 80,
                "Protocol": "HTTP",
                "DefaultActions": [{ "Type": "forward", "TargetGroupArn": { "Ref": "TargetGroup" } }],
            }),
        ),
    );
    if ctx.fleet_role() {
        iam::role_resources(iam::Role::FleetInstance, ctx, &mut r);
    }
    let mut tags: Vec<(String, Value)> = vec![
        ("Application".into(), json!(p)),
        (
            "Name".into(),
            sub(&format!("{}-${{Version}}", sub_escape(&d.group))),
        ),
        ("Version".into(), json!({ "Ref": "Version" })),
        ("Source/Commit".into(), json!({ "Ref": "SourceCommit" })),
        ("Source/Branch".into(), json!(c.source.branch)),
    ];
    for (k, v) in d.tags.iter().chain(&ctx.aws.tags) {
        if !tags.iter().any(|(t, _)| t == k) {
            tags.push((k.clone(), json!(v)));
        }
    }
    tags.sort_by(|a, b| a.0.cmp(&b.0));
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(k, v)| json!({ "Key": k, "Value": v }))
        .collect();
    let mut data = json!({
        "ImageId": { "Ref": "ImageId" },
        "InstanceType": ctx.aws.fleet_instance_type,
        "SecurityGroupIds": [{ "Ref": "InstanceSecurityGroup" }],
        "MetadataOptions": { "HttpTokens": "required", "HttpEndpoint": "enabled" },
        "UserData": { "Fn::Base64": sub(&user_data(ctx, platform)) },
        "TagSpecifications": [
            { "ResourceType": "instance", "Tags": tags },
            { "ResourceType": "volume", "Tags": tags },
        ],
    });
    if ctx.fleet_role() {
        data["IamInstanceProfile"] =
            json!({ "Arn": { "Fn::GetAtt": ["FleetInstanceRoleProfile", "Arn"] } });
    }
    r.insert(
        "LaunchTemplate".into(),
        resource(
            "AWS::EC2::LaunchTemplate",
            "the instances: the AMI, type, tags (Application, Name, Version, Source/*) and the health-gated signal",
            json!({
                "LaunchTemplateName": format!("{p}-lt"),
                "LaunchTemplateData": data,
                "TagSpecifications": [{ "ResourceType": "launch-template", "Tags": ctx.tags() }],
            }),
        ),
    );
    let rolling = &spec.rolling;
    let min_in_service = rolling
        .min_instances_in_service
        .min(spec.max.saturating_sub(1));
    let batch_wait = secs(rolling.batch_timeout_ms.max(h.grace_period_ms), 60, 3600)
        .max(d.timeout.as_secs().min(3600));
    if rolling.pause_ms > 0 {
        warnings.push(
            "deploy.rolling.pause: CloudFormation waits for each batch's signals instead of a fixed pause"
                .into(),
        );
    }
    r.insert(
        "Group".into(),
        json!({
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Metadata": { "Purpose": "the fleet: deploy.capacity, replaced in batches as deploy.rolling says" },
            "CreationPolicy": { "ResourceSignal": {
                "Count": spec.desired,
                "Timeout": iso_duration(d.timeout.as_secs().clamp(60, 43_200)),
            } },
            "UpdatePolicy": { "AutoScalingRollingUpdate": {
                "MaxBatchSize": rolling.max_batch_size.max(1),
                "MinInstancesInService": min_in_service,
                "PauseTime": iso_duration(batch_wait),
                "WaitOnResourceSignals": true,
                "SuspendProcesses": ["AlarmNotification", "AZRebalance", "HealthCheck", "ReplaceUnhealthy", "ScheduledActions"],
            } },
            "Properties": {
                "AutoScalingGroupName": format!("{p}-asg"),
                "LaunchTemplate": {
                    "LaunchTemplateId": { "Ref": "LaunchTemplate" },
                    "Version": { "Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"] },
                },
                "MinSize": spec.min.to_string(),
                "MaxSize": spec.max.to_string(),
                "DesiredCapacity": spec.desired.to_string(),
                "VPCZoneIdentifier": subnets,
                "TargetGroupARNs": [{ "Ref": "TargetGroup" }],
                "HealthCheckType": "ELB",
                "HealthCheckGracePeriod": secs(h.grace_period_ms, 0, 7200).max(interval * u64::from(threshold(h.healthy_threshold))),
                "Tags": ctx.tags().as_array().into_iter().flatten().map(|t| {
                    let mut t = t.clone();
                    t["PropagateAtLaunch"] = json!(false);
                    t
                }).collect::<Vec<_>>(),
            },
        }),
    );
    let outputs = json!({
        "LoadBalancerUrl": { "Value": sub("http://${LoadBalancer.DNSName}/") },
        "GroupName": { "Value": { "Ref": "Group" } },
    });
    Ok(crate::template(
        format!(
            "kiln {}: the deployment (launch template, Auto Scaling group, load balancer)",
            c.name
        ),
        Value::Object(params),
        Value::Object(r),
        outputs,
    ))
}

/// Boot: write deploy.environment and the secrets' parameter names for the
/// image's service, wait until the health check answers on the instance
/// itself, then signal the group; an instance that never gets healthy never
/// signals, and the rollout fails and rolls back.
fn user_data(ctx: &Ctx, platform: &str) -> String {
    let d = ctx.config.deploy.as_ref().expect("deploy");
    let url = format!("http://127.0.0.1:{}{}", d.spec.port, d.spec.health.path);
    let wait = d.timeout.as_secs();
    let esc = |s: &str| sub_escape(s).replace('\'', "");
    if platform == "Windows" {
        let mut s = String::from("<powershell>\n");
        for (k, v) in &d.environment {
            s.push_str(&format!(
                "[Environment]::SetEnvironmentVariable('{}', '{}', 'Machine')\n",
                esc(k),
                esc(v)
            ));
        }
        s.push_str(&format!(
            "$deadline = (Get-Date).AddSeconds({wait})\n$ok = $false\n\
             while (-not $ok -and (Get-Date) -lt $deadline) {{\n  \
             try {{ $ok = (Invoke-WebRequest -UseBasicParsing -Uri '{url}' -TimeoutSec 5).StatusCode -eq 200 }} catch {{ Start-Sleep -Seconds 2 }}\n}}\n\
             $code = if ($ok) {{ 0 }} else {{ 1 }}\n\
             & cfn-signal.exe -e $code --stack ${{AWS::StackName}} --resource Group --region ${{AWS::Region}}\n\
             </powershell>\n"
        ));
        return s;
    }
    let mut s = String::from("#!/bin/sh\nset -u\nmkdir -p /etc/kiln\n");
    s.push_str(&format!("cat > /etc/kiln/{}.env <<'EOF'\n", esc(&d.group)));
    for (k, v) in &d.environment {
        s.push_str(&format!("{}={}\n", esc(k), esc(v)));
    }
    s.push_str("EOF\n");
    if !d.secrets.is_empty() {
        s.push_str(&format!(
            "cat > /etc/kiln/{}.secrets <<'EOF'\n",
            esc(&d.group)
        ));
        for (k, v) in &d.secrets {
            s.push_str(&format!("{}={}\n", esc(k), esc(v)));
        }
        s.push_str("EOF\n");
    }
    s.push_str(&format!(
        "if ! command -v cfn-signal >/dev/null; then\n  \
         python3 -m pip install --break-system-packages https://s3.amazonaws.com/cloudformation-examples/aws-cfn-bootstrap-py3-latest.tar.gz\n\
         fi\n\
         code=1\n\
         end=$(( $(date +%s) + {wait} ))\n\
         while [ \"$(date +%s)\" -lt \"$end\" ]; do\n  \
         if curl -fsS -o /dev/null --max-time 5 '{url}'; then code=0; break; fi\n  \
         sleep 2\n\
         done\n\
         cfn-signal -e \"$code\" --stack ${{AWS::StackName}} --resource Group --region ${{AWS::Region}}\n"
    ));
    s
}

/// The VPC id and the subnets, given or created.
fn network(ctx: &Ctx, r: &mut Map<String, Value>) -> (Value, Value) {
    match &ctx.aws.network {
        Network::Existing { vpc, subnets } => (json!(vpc), json!(subnets)),
        Network::Create => {
            r.insert(
                "Vpc".into(),
                resource(
                    "AWS::EC2::VPC",
                    "the network (aws.network: create)",
                    json!({ "CidrBlock": "10.42.0.0/16", "EnableDnsHostnames": true, "EnableDnsSupport": true, "Tags": ctx.tags() }),
                ),
            );
            r.insert(
                "InternetGateway".into(),
                resource(
                    "AWS::EC2::InternetGateway",
                    "the network's way out",
                    json!({ "Tags": ctx.tags() }),
                ),
            );
            r.insert(
                "GatewayAttachment".into(),
                resource(
                    "AWS::EC2::VPCGatewayAttachment",
                    "attaches the gateway",
                    json!({ "VpcId": { "Ref": "Vpc" }, "InternetGatewayId": { "Ref": "InternetGateway" } }),
                ),
            );
            r.insert(
                "RouteTable".into(),
                resource(
                    "AWS::EC2::RouteTable",
                    "the subnets' routes",
                    json!({ "VpcId": { "Ref": "Vpc" }, "Tags": ctx.tags() }),
                ),
            );
            r.insert(
                "DefaultRoute".into(),
                json!({
                    "Type": "AWS::EC2::Route",
                    "DependsOn": "GatewayAttachment",
                    "Metadata": { "Purpose": "out through the gateway" },
                    "Properties": {
                        "RouteTableId": { "Ref": "RouteTable" },
                        "DestinationCidrBlock": "0.0.0.0/0",
                        "GatewayId": { "Ref": "InternetGateway" },
                    },
                }),
            );
            let mut ids = Vec::new();
            for i in 0..2 {
                let id = format!("Subnet{}", i + 1);
                r.insert(
                    id.clone(),
                    resource(
                        "AWS::EC2::Subnet",
                        "a subnet in its own availability zone",
                        json!({
                            "VpcId": { "Ref": "Vpc" },
                            "CidrBlock": format!("10.42.{i}.0/24"),
                            "AvailabilityZone": { "Fn::Select": [i, { "Fn::GetAZs": "" }] },
                            "MapPublicIpOnLaunch": true,
                            "Tags": ctx.tags(),
                        }),
                    ),
                );
                r.insert(
                    format!("{id}Routes"),
                    resource(
                        "AWS::EC2::SubnetRouteTableAssociation",
                        "the subnet's routes",
                        json!({ "SubnetId": { "Ref": id }, "RouteTableId": { "Ref": "RouteTable" } }),
                    ),
                );
                ids.push(json!({ "Ref": id }));
            }
            (json!({ "Ref": "Vpc" }), Value::Array(ids))
        }
    }
}
