/// `sfmoe download`: a DomainBed dataset into DomainBed's layout.
module SfMoe.Cli.DownloadCommands

open System
open Argu
open SfMoe
open SfMoe.Cli.Output

type DownloadArgs =
    | [<MainCommand; Mandatory>] Dataset of name: string
    | [<Mandatory>] Data_Dir of dir: string
    | Mirror of url: string
    | Force
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, SVIRO or MNIST"
            | Data_Dir _ -> "folder to put it in (DomainBed's layout)"
            | Mirror _ -> "base URL replacing the public sources (also SFMOE_DOWNLOAD_MIRROR)"
            | Force -> "download again even if the dataset is present"

let download (a: ParseResults<DownloadArgs>) =
    let dir = a.GetResult DownloadArgs.Data_Dir
    let opts = Data.DownloadOptions(Mirror = (a.TryGetResult DownloadArgs.Mirror |> Option.toObj), Force = a.Contains DownloadArgs.Force)
    let mutable last = ""
    let progress =
        { new IProgress<Data.DownloadProgress> with
            member _.Report p =
                let line =
                    match p.Total |> Option.ofNullable with
                    | Some t when t > 0L -> sprintf "%s %s %.1f%%" p.Stage p.File (100.0 * float p.Done / float t)
                    | _ -> sprintf "%s %s %s" p.Stage p.File (if isNull p.Message then "" else p.Message)
                if line <> last then
                    last <- line
                    Console.Error.WriteLine line }
    let r = Data.Downloader.Fetch(a.GetResult DownloadArgs.Dataset, dir, progress, opts)
    for w in r.Warnings do eprintfn "warning: %s" w
    Console.WriteLine(sprintf "%s %s in %s" r.Dataset (if r.AlreadyPresent then "already present" else "ready") r.Folder)
    0
