//! `airlockctl`: keys, bundle packing and signing, hook invocation and status inspection.
