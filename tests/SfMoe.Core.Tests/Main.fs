module SfMoe.Core.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    SfMoe.Core.Native.ensure ()
    TorchSharp.torch.set_num_threads 2
    runTestsInAssemblyWithCLIArgs [] argv
