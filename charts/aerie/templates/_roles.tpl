{{/*
The role-specific flags of the two workers, as JSON lists, shared by the
separate-pods layout (target-worker.yaml, draft-worker.yaml) and the
colocated one (colocated.yaml). `memFraction` is the role's
--mem-fraction-static when it runs on a GPU.
*/}}
{{- define "aerie.targetWorkerArgs" -}}
{{- $v := .root.Values -}}
{{- $t := $v.targetWorker -}}
{{- $args := list
      "--max-running-requests" ($t.maxRunningRequests | int | toString)
      "--max-total-tokens" ($t.maxTotalTokens | int | toString)
      "--drain-grace-secs" ($t.drainGraceSecs | int | toString)
      "--tp-size" ($t.tensorParallelSize | int | toString) -}}
{{- if $t.speculativeAdaptive -}}
{{- $args = concat $args (list "--speculative-adaptive") -}}
{{- end -}}
{{- with .featureTransport -}}
{{- $args = concat $args (list "--feature-transport" .) -}}
{{- end -}}
{{- if and $v.gpu.enabled $t.useGpu -}}
{{- $args = concat $args (list "--device" "cuda" "--mem-fraction-static" (.memFraction | toString)) -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{- define "aerie.draftWorkerArgs" -}}
{{- $v := .root.Values -}}
{{- $d := $v.draftWorker -}}
{{- $s := $d.speculative -}}
{{- $args := list
      "--speculative-algorithm" $s.algorithm
      "--speculative-num-steps" ($s.numSteps | int | toString)
      "--speculative-eagle-topk" ($s.eagleTopk | int | toString)
      "--speculative-num-draft-tokens" ($s.numDraftTokens | int | toString) -}}
{{- if $s.minDraftScore -}}
{{- $args = concat $args (list "--speculative-min-draft-score" ($s.minDraftScore | toString)) -}}
{{- end -}}
{{- with $s.draftModelPath -}}
{{- $args = concat $args (list "--speculative-draft-model-path" .) -}}
{{- end -}}
{{- if and $v.gpu.enabled $d.useGpu -}}
{{- $args = concat $args (list "--device" "cuda" "--mem-fraction-static" (.memFraction | toString)) -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{/* The target pod's termination grace: the block's, else drainGraceSecs + 15; it must outlast the drain. */}}
{{- define "aerie.targetGrace" -}}
{{- $t := .Values.targetWorker -}}
{{- $grace := int $t.terminationGracePeriodSeconds -}}
{{- if eq $grace 0 -}}
{{- $grace = add (int $t.drainGraceSecs) 15 -}}
{{- end -}}
{{- if le $grace (int $t.drainGraceSecs) -}}
{{- fail "targetWorker.terminationGracePeriodSeconds must exceed targetWorker.drainGraceSecs, or the pod is killed before it drains" -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
