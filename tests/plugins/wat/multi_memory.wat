;; Hostile heading mapper: three core instances, each with a linear memory of
;; its own. Each memory alone is under a 64 MiB cap (the ballast ones are
;; 37.5 MiB), together they are far over it. A cap checked per memory lets
;; it instantiate; a cap over the whole store refuses it.
(component
  (core module $Main
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "configure") (param i32 i32) (result i32) unreachable)
    (func (export "headings") (param i32 i32) (result i32) unreachable))
  (core module $Ballast (memory 600))
  (core instance $main (instantiate $Main))
  (core instance $ballast1 (instantiate $Ballast))
  (core instance $ballast2 (instantiate $Ballast))
  (type $event (record
    (field "interaction" u64)
    (field "actor" string)
    (field "type" string)
    (field "content" string)
    (field "timestamp" string)
    (field "id" (option string))
    (field "term" (option u64))))
  (export $event-export "event" (type $event))
  (type $settings (list (tuple string string)))
  (func $configure (param "settings" $settings) (result (result (error string)))
    (canon lift (core func $main "configure") (memory (core memory $main "memory"))
      (realloc (core func $main "cabi_realloc"))))
  (func $headings (param "events" (list $event-export)) (result (list (option string)))
    (canon lift (core func $main "headings") (memory (core memory $main "memory"))
      (realloc (core func $main "cabi_realloc"))))
  (instance $mapper
    (export "configure" (func $configure))
    (export "headings" (func $headings)))
  (export "huddle:plugin/mapper@0.1.0" (instance $mapper)))
