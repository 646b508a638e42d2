"""Running compiled code: the compiled network and its helper-thread team (``compiled``), and the
checks every array and weight set passes before native code sees it (``boundary``)."""
